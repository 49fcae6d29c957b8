"""Our full snapshot: one ``Snapshotter.take_full_snapshot`` of a running etcd into a store.

``python -m bench.drivers.full_snapshot --endpoint URL --store JSON [--compression gzip]``
Prints seconds (connect + snapshot + upload), bytes read from etcd and stored, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.drivers._util import emit, quiet_logs, store_config


async def main(args) -> dict:
    from etcdbr.config import Config
    from etcdbr.snapshotter import Snapshotter
    from etcdbr.snapstore import open_store

    cfg = Config()
    cfg.etcd.endpoints = [args.endpoint]
    cfg.snapshotter.compress_snapshots = args.compression != "none"
    if args.compression != "none":
        cfg.snapshotter.compression_policy = args.compression
    cfg.store = store_config(args.store)
    store = open_store(cfg.store)
    snapper = Snapshotter(store, cfg)
    t0 = time.perf_counter()
    try:
        snap = await snapper.take_full_snapshot()
    finally:
        await snapper.close()
    took = time.perf_counter() - t0
    stored = snap.size
    listed = {s.key: s for s in store.list()}
    if snap.key in listed:
        stored = listed[snap.key].size
    store.close()
    return {"seconds": round(took, 3), "revision": snap.last_revision, "stored_bytes": stored, "key": snap.key}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--compression", default="none")
    a = p.parse_args()
    quiet_logs()
    emit(asyncio.run(main(a)))
