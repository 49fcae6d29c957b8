"""Secondary lag: the snapshotter (full at start, then a delta every second while a writer keeps
etcd busy) with the BackupCopier wired as in the server (``add_listener(copier.notify)``).

For each snapshot: the moment its upload to the primary returned (the listener call) and the
moment the copier reported it copied *and verified* on the secondary (its progress callback,
called after the read-back check). At the end the secondary is listed to confirm every snapshot
is there.

``python -m bench.drivers.secondary_lag --endpoint URL --primary JSON --secondary JSON --count N``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from datetime import timedelta

from bench.drivers._util import emit, quiet_logs, store_config


async def writer(endpoint: str, stop: asyncio.Event, rate: int) -> int:
    import grpc
    from etcdbr.etcd import proto as pb
    from etcdbr.etcd import proto as stubs

    async with grpc.aio.insecure_channel(endpoint.split("://")[-1]) as ch:
        kv = stubs.KVStub(ch)
        n = 0
        tick = 0.05
        per_tick = max(1, int(rate * tick))
        while not stop.is_set():
            t0 = time.monotonic()
            await asyncio.gather(*(kv.Put(pb.PutRequest(key=b"/registry/lag/%06d" % ((n + i) % 5000),
                                                        value=os.urandom(200)))
                                   for i in range(per_tick)))
            n += per_tick
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - t0)))
        return n


async def main(args) -> dict:
    from etcdbr.config import Config, SyncConfig
    from etcdbr.copier import BackupCopier
    from etcdbr.snapshotter import Snapshotter
    from etcdbr.snapstore import open_store

    cfg = Config()
    cfg.etcd.endpoints = [args.endpoint]
    cfg.snapshotter.delta_snapshot_period = timedelta(seconds=args.period)
    cfg.snapshotter.schedule = "0 0 1 1 *"   # no scheduled full during the run
    cfg.store = store_config(args.primary, "")
    cfg.secondary = store_config(args.secondary, "SECONDARY_")
    primary, secondary = open_store(cfg.store), open_store(cfg.secondary)

    uploaded: dict[str, float] = {}
    copied: dict[str, float] = {}
    names: dict[str, str] = {}
    enough = asyncio.Event()

    def on_progress(event, snap, _value) -> None:
        if event == "copied" and snap is not None:
            copied.setdefault(snap.copier_key(), time.monotonic())

    copier = BackupCopier(primary, secondary, SyncConfig(enabled=True, period=timedelta(hours=1)),
                          progress=on_progress)

    def on_upload(snap) -> None:
        key = snap.copier_key()
        uploaded[key] = time.monotonic()
        names[key] = snap.snap_name
        copier.notify(snap)
        if len(uploaded) >= args.count:
            enough.set()

    snapper = Snapshotter(primary, cfg)
    snapper.add_listener(on_upload)
    await copier.start()
    stop, stop_writer = asyncio.Event(), asyncio.Event()
    t0 = time.monotonic()
    wtask = asyncio.create_task(writer(args.endpoint, stop_writer, args.rate))
    stask = asyncio.create_task(snapper.run(stop, full_at_start=True, flush_on_stop=False))
    done, _ = await asyncio.wait([asyncio.ensure_future(enough.wait()), stask], timeout=args.timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    stop_writer.set()
    stop.set()
    puts = await wtask
    await stask
    deadline = time.monotonic() + 120
    while set(uploaded) - set(copied) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await copier.stop(5)
    await snapper.close()
    on_secondary = {s.copier_key() for s in secondary.list()}
    missing = sorted(names[k] for k in uploaded if k not in on_secondary)
    primary.close()
    secondary.close()
    order = sorted(uploaded, key=uploaded.get)
    lags = [(round(uploaded[k] - t0, 3), round(copied[k] - uploaded[k], 3) if k in copied else None) for k in order]
    return {"snapshots": len(uploaded), "puts": puts, "lags": lags, "missing_on_secondary": missing,
            "never_copied": [names[k] for k in order if k not in copied], "seconds": round(time.monotonic() - t0, 1)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--primary", required=True)
    p.add_argument("--secondary", required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--period", type=float, default=1.0)
    p.add_argument("--rate", type=int, default=200, help="puts per second while snapshots are taken")
    p.add_argument("--timeout", type=float, default=900)
    a = p.parse_args()
    quiet_logs()
    emit(asyncio.run(main(a)))
