"""A temporary etcd member on a restored data dir, reachable only on loopback.

It exists to replay delta snapshots (and for ``compact``, to take a fresh full snapshot), so it
is started with fsync off and its own limits, listens on free 127.0.0.1 ports, writes its log to
a file in the restore's work dir, and is stopped by PID when the work is done. Any process left
running when the interpreter exits is stopped too, so a failed restore never leaves a member
holding the data dir's lock.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import time
import weakref
from dataclasses import dataclass, replace
from pathlib import Path

from .. import retry
from ..errors import EtcdError, RestoreError
from ..etcd.blocking import EtcdKV
from .binaries import EtcdRelease

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
# etcd's answer to a read without a user while authentication is on.
AUTH_REFUSAL = "user name is empty"
STOP_GRACE = 30.0
_LIVE: "weakref.WeakSet[EmbeddedEtcd]" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - only on abnormal exits
    for member in list(_LIVE):
        member.stop()


@dataclass(frozen=True)
class EmbeddedLimits:
    quota_bytes: int
    max_request_bytes: int
    max_txn_ops: int
    max_send_bytes: int
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "30m"


def _free_ports(n: int) -> list[int]:
    held, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            held.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    return ports


def _member_env() -> dict[str, str]:
    # One Go scheduler thread: the replay's transactions are sequential anyway, the member then
    # applies two pipelined requests in the order they were sent far more often (replay.py's
    # REPLAY_IN_FLIGHT), and it leaves the other cores to the restore itself.
    return dict(os.environ, GOMAXPROCS="1")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class EmbeddedEtcd:
    def __init__(self, release: EtcdRelease, data_dir: str | Path, *, name: str, limits: EmbeddedLimits,
                 work_dir: str | Path, ready_timeout: float = READY_TIMEOUT) -> None:
        self.release = release
        self.data_dir = Path(data_dir)
        self.name = name
        self.limits = limits
        self.log_path = Path(work_dir) / "embedded-etcd.log"
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        self.client: EtcdKV | None = None
        self.endpoint = ""
        self.auth_enabled = False  # the data dir has etcd authentication on (reads need a user)

    def _command(self, client_port: int, peer_port: int) -> list[str]:
        lim = self.limits
        client_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        # The peer URL flags only satisfy etcd's start-up checks: a member restarting from its
        # WAL keeps the membership recorded there, which is what the restored cluster needs.
        return [
            self.release.etcd,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client_url,
            "--advertise-client-urls", client_url,
            "--listen-peer-urls", peer_url,
            "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"{self.name}={peer_url}",
            "--quota-backend-bytes", str(lim.quota_bytes),
            "--max-request-bytes", str(lim.max_request_bytes),
            "--max-txn-ops", str(lim.max_txn_ops),
            "--auto-compaction-mode", lim.auto_compaction_mode,
            "--auto-compaction-retention", str(lim.auto_compaction_retention),
            "--unsafe-no-fsync",
            "--logger", "zap",
            "--log-level", "warn",
            "--log-outputs", "stderr",
        ]

    def start(self) -> "EmbeddedEtcd":
        last_error = ""
        for _attempt in range(3):  # a free port can be taken between choosing and binding it
            client_port, peer_port = _free_ports(2)
            cmd = self._command(client_port, peer_port)
            # Kept as private as the snapshots beside it (0600 whatever the umask).
            with open(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
                out.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
                out.flush()
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             start_new_session=True, env=_member_env())
            _LIVE.add(self)
            self.endpoint = f"127.0.0.1:{client_port}"
            log.debug("started temporary etcd", extra={"pid": self.proc.pid, "endpoint": self.endpoint,
                                                       "data_dir": str(self.data_dir)})
            self.client = EtcdKV(self.endpoint, max_send_bytes=self.limits.max_send_bytes, timeout=120.0)
            try:
                self._wait_ready()
                return self
            except RestoreError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" not in _tail(self.log_path).lower():
                    raise
        raise RestoreError(f"temporary etcd could not get free ports: {last_error}")

    def _wait_ready(self) -> None:
        proc, client = self.proc, self.client
        assert proc is not None and client is not None
        error = ""

        def ready() -> bool | None:
            nonlocal error
            rc = proc.poll()
            if rc is not None:
                raise RestoreError(f"temporary etcd on {self.data_dir} exited with code {rc} while starting; "
                                   f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
            try:
                client.revision()
                return True
            except EtcdError as exc:
                error = str(exc)
                if AUTH_REFUSAL in error:
                    # etcd checks a read's user only after the read barrier, so this answer too
                    # means the member has applied everything it committed
                    self.auth_enabled = True
                    return True
            return None

        if not retry.poll(ready, every=0.1, within=self.ready_timeout):
            raise RestoreError(f"temporary etcd on {self.data_dir} not ready after {self.ready_timeout:.0f}s "
                               f"({error}); last lines of {self.log_path}:\n{_tail(self.log_path)}")

    def revision(self) -> int:
        """The member's current revision; answered even when etcd authentication is on."""
        assert self.client is not None
        return self.client.status().header.revision if self.auth_enabled else self.client.revision()

    def restart(self, **changes) -> None:
        """Restart on the same data dir with some limits changed (e.g. a larger --max-txn-ops)."""
        self.stop()
        self.limits = replace(self.limits, **changes)
        self.start()

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("temporary etcd did not stop in time; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait(timeout=30)
        else:
            proc.wait()

    def __enter__(self) -> "EmbeddedEtcd":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
