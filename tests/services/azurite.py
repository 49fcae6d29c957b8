"""An Azure Blob Storage emulator for tests: Azurite (npm ``azurite@3.37.0``).

``scripts/install-test-deps`` installs it into ``<repo>/.tools/azurite``;
this module runs ``.tools/azurite/node_modules/.bin/azurite-blob`` (override:
``$AZURITE_BIN``), blob service only, on 127.0.0.1 with a free port, with
``--location <workdir>/data --disableTelemetry --skipApiVersionCheck --silent``.
Azurite 3.37.0 declares ``node >= 22`` but runs on Node.js 20 (npm only warns).

Auth: Shared Key with the well-known development account ``devstoreaccount1``
(a wrong key is rejected with 403 AuthorizationFailure).

What was verified with azure-storage-blob 12.x:

* works: container create/exists, upload (single put and staged blocks for
  large blobs), download, ``list_blobs`` pagination (``results_per_page``),
  ``walk_blobs`` with delimiter, metadata, ``overwrite=False`` ->
  ResourceExistsError, ``etag`` + ``MatchConditions.IfNotModified`` ->
  ResourceModifiedError on mismatch, batch ``delete_blobs``, missing blob ->
  ResourceNotFoundError.
* NOT working: blob immutability policies (``set_immutability_policy``) and
  legal holds (``set_legal_hold``) -> 501 ``APINotImplemented``; version-level
  WORM can only be tested for its error handling.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ._proc import LOCALHOST, REPO_ROOT, Service, ServiceBinaryNotFound, free_port

AZURITE_VERSION = "3.37.0"
ACCOUNT = "devstoreaccount1"
# the well-known, public Azurite development key
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def find_azurite_blob() -> Path:
    override = os.environ.get("AZURITE_BIN")
    p = Path(override) if override else REPO_ROOT / ".tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
    if p.is_file() and os.access(p, os.X_OK):
        return p
    raise ServiceBinaryNotFound(f"azurite-blob (azurite@{AZURITE_VERSION})", [str(p)])


class Azurite(Service):
    """Azurite blob service on ``http://127.0.0.1:<free port>/devstoreaccount1``.

    Args:
        workdir: data (``--location``) and log live here (temp dir when None).
        in_memory: ``--inMemoryPersistence`` instead of files.
        loose: ``--loose`` (ignore unsupported headers).
        binary: path of ``azurite-blob`` (default ``$AZURITE_BIN`` or
            ``<repo>/.tools/azurite/node_modules/.bin/azurite-blob``).
    """

    kind = "azurite"
    default_startup_timeout = 60.0

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        in_memory: bool = False,
        loose: bool = False,
        binary: Path | str | None = None,
        startup_timeout: float | None = None,
    ):
        super().__init__(workdir, startup_timeout=startup_timeout)
        self.binary = Path(binary) if binary else find_azurite_blob()
        self.in_memory = in_memory
        self.loose = loose
        self.data_dir = self.workdir / "data"
        self.account = ACCOUNT
        self.key = ACCOUNT_KEY
        self.port: int | None = None

    account_name = property(lambda self: self.account)
    account_key = property(lambda self: self.key)

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.port}/{self.account}"

    account_url = endpoint

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account};"
            f"AccountKey={self.key};BlobEndpoint={self.endpoint};"
        )

    def _choose_ports(self) -> None:
        self.port = free_port()

    def _reuse_ports_on_start(self) -> bool:
        return False

    def _expected_ports(self) -> set[int]:
        return {self.port}

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(self.binary),
            "--blobHost", LOCALHOST,
            "--blobPort", str(self.port),
            "--location", str(self.data_dir),
            "--disableTelemetry",
            "--skipApiVersionCheck",
            "--silent",
        ]
        if self.in_memory:
            cmd.append("--inMemoryPersistence")
        if self.loose:
            cmd.append("--loose")
        return cmd

    def _health_check(self) -> bool:
        # an unauthenticated list answers 403 from Azurite itself
        try:
            with urllib.request.urlopen(f"{self.endpoint}?comp=list", timeout=2) as resp:
                server = resp.headers.get("Server", "")
        except urllib.error.HTTPError as e:
            server = e.headers.get("Server", "")
        return server.startswith("Azurite-Blob")

    # ---- clients -----------------------------------------------------------

    def client(self, **kwargs):
        """An azure.storage.blob.BlobServiceClient (shared key auth)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            account_url=self.endpoint,
            credential={"account_name": self.account, "account_key": self.key},
            **kwargs,
        )

    def create_container(self, name: str) -> str:
        self.client().create_container(name)
        return name
