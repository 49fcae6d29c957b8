"""Shared plumbing for the real-service test harness.

Every service class in this package derives from :class:`Service`, which

* owns a work directory (a fresh temp dir unless one is given),
* launches exactly one subprocess, with stdout/stderr appended to a log file
  inside that work directory,
* waits for the service to become healthy (service specific check) and then
  verifies, via psutil, that *our* PID listens on every port we asked for
  (some servers silently move to another port when one is busy),
* retries with fresh ports when a port turned out to be taken,
* stops only its own process, by PID: SIGTERM, then SIGKILL after a grace
  period.

Nothing here ever signals a process it did not start.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Iterable, Sequence

import psutil

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"

#: grace period between SIGTERM and SIGKILL
STOP_GRACE_SECONDS = 10.0

_INSTALL_HINT = (
    "Run `scripts/test` (or `scripts/install-test-deps`) from the repository "
    "root to install every test service."
)


class ServiceError(RuntimeError):
    """A test service could not be started or misbehaved."""


class ServiceBinaryNotFound(ServiceError):
    """The executable of a test service is not installed."""

    def __init__(self, what: str, looked_at: Iterable[str]):
        looked = ", ".join(str(p) for p in looked_at) or "(nowhere)"
        super().__init__(f"{what} not found (looked at: {looked}). {_INSTALL_HINT}")


class PortInUse(ServiceError):
    """The service could not get (all of) the ports it was given."""


# --------------------------------------------------------------------------
# ports


def free_ports(count: int = 1, host: str = LOCALHOST, *, offset: int | None = None) -> list[int]:
    """Return ``count`` distinct TCP ports that were free a moment ago.

    All sockets are held open until every port is chosen, so the ports are
    distinct. When ``offset`` is given, ``port + offset`` is checked to be free
    as well (for servers that derive a second port from the first).
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if offset is not None:
                other = port + offset
                if other > 65535 or other in ports:
                    continue
                s2 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(s2)
                try:
                    s2.bind((host, other))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


def free_port(host: str = LOCALHOST) -> int:
    return free_ports(1, host)[0]


def listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` listens (empty if it is gone)."""
    try:
        proc = psutil.Process(pid)
        conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
        return set()
    return {c.laddr.port for c in conns if c.status == psutil.CONN_LISTEN}


# --------------------------------------------------------------------------
# misc helpers


def venv_bin_dir() -> Path:
    """The bin dir of the running interpreter's venv (not resolved)."""
    return Path(sys.executable).parent


def which(name: str, *, env_override: str | None = None, extra_dirs: Sequence[Path | str] = ()) -> Path:
    """Locate an executable: ``$env_override`` first, then ``extra_dirs``,
    then the venv bin dir, then ``$PATH``."""
    looked: list[str] = []
    if env_override and os.environ.get(env_override):
        p = Path(os.environ[env_override])
        if p.is_dir():
            p = p / name
        if p.is_file() and os.access(p, os.X_OK):
            return p
        raise ServiceBinaryNotFound(f"{name} (from ${env_override})", [str(p)])
    dirs = [str(d) for d in extra_dirs] + [str(venv_bin_dir())]
    looked.extend(dirs)
    path = os.pathsep.join(dirs + [os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found:
        return Path(found)
    looked.append("$PATH")
    raise ServiceBinaryNotFound(name, looked)


def tail(path: Path | str, lines: int = 40, since: int = 0) -> str:
    """Last ``lines`` lines of a log file, ignoring bytes before ``since``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(since, size - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(data.splitlines()[-lines:])


def unique_name(prefix: str = "t") -> str:
    """A short lowercase unique name, valid as S3 bucket / GCS bucket / Azure
    container name (3-63 chars, [a-z0-9-])."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}".lower()


# --------------------------------------------------------------------------
# process management

_LIVE: "weakref.WeakSet[Service]" = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for svc in list(_LIVE):
        try:
            svc.stop()
        except Exception:  # noqa: BLE001 - best effort at exit: stop the others too
            pass


atexit.register(_stop_all_at_exit)


def _preexec_pdeathsig() -> None:  # pragma: no cover - runs in the child
    # Kill the child when the process (thread) that started it dies, so a
    # crashed/killed pytest does not leave servers behind.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux's libc: the atexit hook still stops the services
        pass


class Service:
    """Base class: one subprocess, one work dir, one log file."""

    #: short name used for temp dirs and messages
    kind: str = "service"
    #: seconds to wait for health
    default_startup_timeout: float = 60.0
    #: how many times to retry with fresh ports when a port was taken
    port_retries: int = 3
    #: lowercase log fragments meaning "a port was taken" (-> retry)
    port_in_use_markers: tuple[str, ...] = ("address already in use", "eaddrinuse")

    def __init__(self, workdir: Path | str | None = None, *, startup_timeout: float | None = None):
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"etcdbr-{self.kind}-"))
            self._own_workdir = True
        else:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._own_workdir = False
        self.log_path = self.workdir / f"{self.kind}.log"
        self.startup_timeout = startup_timeout if startup_timeout is not None else self.default_startup_timeout
        self.proc: subprocess.Popen | None = None
        #: wall-clock seconds the last successful start() took
        self.startup_seconds: float | None = None
        self._cmd: list[str] = []
        self._log_offset = 0

    # ---- to be provided by subclasses -------------------------------------

    def _choose_ports(self) -> None:
        """Pick (new) ports; called before each launch attempt."""
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _expected_ports(self) -> set[int]:
        """Ports our process must listen on once healthy."""
        raise NotImplementedError

    def _health_check(self) -> bool:
        """Return True once the service answers correctly; may raise."""
        raise NotImplementedError

    def _env(self) -> dict[str, str] | None:
        return None

    def _cwd(self) -> Path:
        return self.workdir

    def _after_port_failure(self) -> None:
        """Undo state left by a launch that failed for want of a port."""

    def _reuse_ports_on_start(self) -> bool:
        """True when a restart must keep the previous ports (e.g. etcd data
        dir that recorded its peer URL)."""
        return False

    # ---- public API --------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "Service":
        if self.is_running():
            return self
        t0 = time.monotonic()
        reuse = self._reuse_ports_on_start()
        attempts = 1 if reuse else self.port_retries
        last: Exception | None = None
        for _attempt in range(attempts):
            if not reuse:
                self._choose_ports()
            self.launch()
            try:
                self.wait_ready()
            except PortInUse as e:
                last = e
                self.stop()
                self._after_port_failure()
                continue
            except BaseException:
                self.stop()
                raise
            self.startup_seconds = time.monotonic() - t0
            return self
        raise ServiceError(f"{self.kind}: could not get free ports after {attempts} attempt(s): {last}")

    def launch(self) -> None:
        """Start the subprocess without waiting for it to be ready."""
        self._cmd = [str(c) for c in self._command()]
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self._cmd)}\n".encode())
            log.flush()
            env = self._env()
            kwargs = {}
            if threading.current_thread() is threading.main_thread():
                kwargs["preexec_fn"] = _preexec_pdeathsig
            self.proc = subprocess.Popen(
                self._cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self._cwd()),
                env=env,
                start_new_session=True,  # keep terminal Ctrl+C out; we stop it ourselves
                **kwargs,
            )
        _LIVE.add(self)

    def wait_ready(self, timeout: float | None = None) -> None:
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        last_err: Exception | None = None
        expected = self._expected_ports()
        while True:
            assert self.proc is not None
            rc = self.proc.poll()
            if rc is not None:
                log = tail(self.log_path, since=self._log_offset)
                msg = self._failure_message(f"exited with code {rc} during startup", log)
                if any(m in log.lower() for m in self.port_in_use_markers):
                    raise PortInUse(msg)
                raise ServiceError(msg)
            try:
                ok = self._health_check()
            except Exception as e:  # noqa: BLE001 - not ready yet; the last error is reported on timeout
                ok = False
                last_err = e
            if ok:
                listening = listening_ports(self.proc.pid)
                missing = expected - listening
                if not missing:
                    return
                last_err = PortInUse(f"not listening on {sorted(missing)} (listening on {sorted(listening)})")
            if time.monotonic() > deadline:
                if isinstance(last_err, PortInUse):
                    raise PortInUse(self._failure_message(str(last_err), tail(self.log_path, since=self._log_offset)))
                raise ServiceError(
                    self._failure_message(
                        f"not healthy after {timeout:.0f}s (last error: {last_err!r})",
                        tail(self.log_path, since=self._log_offset),
                    )
                )
            time.sleep(0.1)

    def _failure_message(self, what: str, log_tail: str) -> str:
        return (
            f"{self.kind} {what}\n"
            f"command: {' '.join(self._cmd)}\n"
            f"log: {self.log_path}\n"
            f"----- last lines of the log -----\n{log_tail}\n---------------------------------"
        )

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """SIGTERM our own process, SIGKILL it after ``grace`` seconds."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        else:
            proc.wait()

    def kill(self) -> None:
        """SIGKILL our own process at once (crash simulation)."""
        self.stop(grace=0)

    def cleanup(self) -> None:
        """Stop, and remove the work dir if we created it."""
        self.stop()
        if self._own_workdir and not os.environ.get("ETCDBR_KEEP_SERVICE_DIRS"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {state} workdir={self.workdir}>"
