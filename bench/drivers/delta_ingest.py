"""The delta snapshotter under load: ``Snapshotter.run`` (full at start, then deltas on its default
period and memory limit) while another process writes, sampling every 0.1 s etcd's revision and
the last revision the snapshotter has collected.

Watch lag at a sample = age of the oldest revision etcd has and the snapshotter has not yet
collected (0 when it has everything): ``t - T(collected + 1)`` where ``T(r)`` is the first sample
at which etcd had reached ``r``.

``python -m bench.drivers.delta_ingest --endpoint URL --store JSON --ready-file P --stop-file P``
The driver writes ``--ready-file`` once the startup snapshot is done; the caller writes the final
revision of its load into ``--stop-file``; the driver then waits until it has collected that
revision (the catch-up time) and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import threading
import time
from pathlib import Path

from bench.drivers._util import cpu_seconds, emit, quiet_logs, store_config


def sampler(endpoint: str, snapper, samples: list, stop: threading.Event, period: float = 0.1) -> None:
    import grpc
    from etcdbr.etcd import proto as pb
    from etcdbr.etcd import proto as stubs

    ch = grpc.insecure_channel(endpoint.split("://")[-1])
    mt = stubs.MaintenanceStub(ch)
    t0 = time.monotonic()
    while not stop.is_set():
        rev = mt.Status(pb.StatusRequest(), timeout=10).header.revision
        col = snapper.collected_revision or 0
        samples.append((time.monotonic() - t0, rev, col))
        time.sleep(max(0.0, period - (time.monotonic() - t0) % period))
    ch.close()


def lags(samples: list[tuple[float, int, int]]) -> list[float]:
    times = [s[0] for s in samples]
    revs = []
    running = 0
    for _, rev, _ in samples:  # etcd's revision only grows; keep it monotonic against sampling jitter
        running = max(running, rev)
        revs.append(running)
    out = []
    for t, rev, col in samples:
        if col >= rev:
            out.append(0.0)
            continue
        i = bisect.bisect_left(revs, col + 1)
        out.append(max(0.0, t - times[min(i, len(times) - 1)]))
    return out


async def main(args) -> dict:
    from etcdbr.config import Config
    from etcdbr.snapshotter import Snapshotter
    from etcdbr.snapstore import open_store

    cfg = Config()
    cfg.etcd.endpoints = [args.endpoint]
    cfg.snapshotter.schedule = "0 0 1 1 *"
    cfg.store = store_config(args.store)
    store = open_store(cfg.store)
    snapper = Snapshotter(store, cfg)
    uploads = []
    snapper.add_listener(lambda s: uploads.append((s.kind.value, s.start_revision, s.last_revision)))
    stop = asyncio.Event()
    task = asyncio.create_task(snapper.run(stop, full_at_start=True, flush_on_stop=args.flush))
    while not snapper.ready:
        if task.done():
            await task
            raise SystemExit("snapshotter stopped before it was ready")
        await asyncio.sleep(0.05)
    samples: list = []
    halt = threading.Event()
    th = threading.Thread(target=sampler, args=(args.endpoint, snapper, samples, halt), daemon=True)
    th.start()
    cpu_at_ready = cpu_seconds()
    Path(args.ready_file).write_text("ready")
    stop_file = Path(args.stop_file)
    while not stop_file.exists() or not stop_file.read_text().strip():
        await asyncio.sleep(0.05)
    final = int(stop_file.read_text())
    t_stop = time.monotonic()
    while (snapper.collected_revision or 0) < final and time.monotonic() - t_stop < 120:
        await asyncio.sleep(0.01)
    catch_up = time.monotonic() - t_stop
    cpu_during_load = cpu_seconds() - cpu_at_ready  # the watch, the deltas and the sampler thread
    halt.set()
    th.join()
    stop.set()
    await task
    await snapper.close()
    store.close()
    lag = lags(samples)
    return {"catch_up_seconds": round(catch_up, 3), "cpu_during_load": round(cpu_during_load, 2), "collected": snapper.collected_revision, "final": final,
            "lags": [round(x, 3) for x in lag], "samples": len(samples),
            "deltas": sum(1 for u in uploads if u[0] != "Full"), "uploads": uploads}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--ready-file", required=True)
    p.add_argument("--stop-file", required=True)
    p.add_argument("--flush", action="store_true", help="upload the buffered events as a last delta on stop")
    a = p.parse_args()
    quiet_logs()
    emit(asyncio.run(main(a)))
