"""The Go tool's restore (``etcdbrctl restore``) of a store's latest chain, with its phases taken
from its log as the lines arrive: the full part (until "Successfully restored from base
snapshot"), and the delta replay (from "Applying delta snapshots..." to the last delta's
"Removing temporary delta snapshot events file").

``python -m bench.drivers.go_restore --binary PATH --store JSON --data-dir DIR``
The S3 credentials file is the one our stores read (``AWS_APPLICATION_CREDENTIALS_JSON``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import threading
import time

from bench.drivers._util import emit


def main(args) -> dict:
    spec = json.loads(args.store)
    cmd = [args.binary, "restore", "--storage-provider", spec["provider"], "--store-container", spec["container"],
           "--store-prefix", spec.get("prefix", "etcd"), "--data-dir", args.data_dir,
           "--restoration-temp-snapshots-dir", args.data_dir + ".tmp"]
    if spec.get("endpoint_override"):
        cmd += ["--store-endpoint-override", spec["endpoint_override"]]
    env = dict(os.environ)
    env.pop("AWS_CA_BUNDLE", None)  # the Go SDK refuses a CA bundle with its custom HTTP client
    marks: dict[str, float] = {}
    tail: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=env, text=True, bufsize=1)

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            now = time.perf_counter() - t0
            if "Successfully restored from base snapshot" in line:
                marks["full_done"] = now
            elif "Applying delta snapshots..." in line:
                marks["deltas_start"] = now
            elif "Removing temporary delta snapshot events file" in line:
                marks["deltas_end"] = now
            tail.append(line)
            del tail[:-40]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    code = proc.wait()
    took = time.perf_counter() - t0
    reader.join(timeout=10)
    if code != 0:
        raise SystemExit(f"etcdbrctl restore failed ({code}):\n{''.join(tail)}")
    phases = {"full_part": marks.get("full_done", 0.0)}
    if "deltas_start" in marks and "deltas_end" in marks:
        phases["deltas"] = marks["deltas_end"] - marks["deltas_start"]
    return {"seconds": round(took, 3), "phases": {k: round(v, 3) for k, v in phases.items()}}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--data-dir", required=True)
    emit(main(p.parse_args()))
