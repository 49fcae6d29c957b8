"""Our copy: one ``BackupCopier.sync_once`` from a source store to a destination store.

``python -m bench.drivers.copy --src JSON --dst JSON [--concurrency N] [--expect N] [--verify content|metadata]``
Prints seconds (open stores + list + copy + verify), snapshots and bytes copied, peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from bench.drivers._util import emit, quiet_logs, store_config


async def main(args) -> dict:
    from etcdbr.config import SyncConfig
    from etcdbr.copier import BackupCopier
    from etcdbr.snapstore import open_store

    t0 = time.perf_counter()
    src = open_store(store_config(args.src, ""))
    dst = open_store(store_config(args.dst, "SECONDARY_"))
    copier = BackupCopier(src, dst, SyncConfig(enabled=True, concurrent_copies=args.concurrency,
                                                      verify=args.verify))
    result = await copier.sync_once(delete_orphans=False)
    took = time.perf_counter() - t0
    await copier.stop(0)
    src.close()
    dst.close()
    if not result.ok or (args.expect and len(result.copied) != args.expect):
        raise SystemExit(f"copy incomplete: {result.to_json()}")
    return {"seconds": round(took, 3), "copied": len(result.copied), "bytes": result.bytes_copied}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--src", required=True)
    p.add_argument("--dst", required=True)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--verify", choices=("content", "metadata"), default="content")
    a = p.parse_args()
    quiet_logs()
    emit(asyncio.run(main(a)))
