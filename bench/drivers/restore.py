"""Our restore: ``Restorer.restore`` of a store's latest chain into a fresh data dir, with each
phase timed: the full part (fetch + decompress + ``etcdutl snapshot restore``), the temporary
member's start (replay through etcd only), and the deltas (fetch, decode, replay).

``python -m bench.drivers.restore --store JSON --data-dir DIR --etcd-bin-dir DIR [--delta-replay direct|etcd]
[--to-revision N]``
"""

from __future__ import annotations

import argparse
import time

from bench.drivers._util import emit, quiet_logs, store_config


def main(args) -> dict:
    from etcdbr.config import RestorationConfig
    from etcdbr.restore import Restorer, restorer as mod
    from etcdbr.snapstore import open_store

    phases: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
        return wrapper

    R = mod.Restorer
    R._fetch_full = timed("fetch_full", R._fetch_full)
    R._restore_full = timed("etcdutl_restore", R._restore_full)
    R._apply_deltas = timed("deltas", R._apply_deltas)
    # the direct replay: from the db's existence on (its deltas are fetched and decoded ahead,
    # while etcdutl restores the full snapshot: that overlap is in neither phase alone)
    mod.DirectReplay.run = timed("deltas", mod.DirectReplay.run)
    mod.EmbeddedEtcd.start = timed("member_start", mod.EmbeddedEtcd.start)
    mod.EmbeddedEtcd.stop = timed("member_stop", mod.EmbeddedEtcd.stop)

    store = open_store(store_config(args.store))
    cfg = RestorationConfig(data_dir=args.data_dir, temp_snapshots_dir=args.data_dir + ".tmp",
                            etcd_bin_dir=args.etcd_bin_dir, delta_replay=args.delta_replay)
    restorer = Restorer(store, cfg)
    t0 = time.perf_counter()
    if args.to_revision:  # a point-in-time restore plans its chain from the listing: timed too
        from etcdbr.restore.pitr import Target

        chain = restorer.plan(Target(revision=args.to_revision))
    else:
        chain = restorer.latest()
    revision = restorer.restore(args.data_dir, chain=chain)
    took = time.perf_counter() - t0
    store.close()
    return {"seconds": round(took, 3), "revision": revision, "full_revision": chain.full.last_revision,
            "deltas": len(chain.deltas), "full_bytes": chain.full.size,
            "phases": {k: round(v, 3) for k, v in phases.items()},
            "full_part": round(phases.get("fetch_full", 0) + phases.get("etcdutl_restore", 0), 3)}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--etcd-bin-dir", required=True)
    p.add_argument("--delta-replay", choices=("direct", "etcd"), default="direct")
    p.add_argument("--to-revision", type=int, default=0)
    a = p.parse_args()
    quiet_logs()
    emit(main(a))
