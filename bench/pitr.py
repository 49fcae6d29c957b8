"""Point-in-time restore: ``restore --to-revision`` to the middle of a chain against a restore to
its end, same chain, same run.

The chain is made as the ``restore`` benchmark makes it (our snapshotter on a fresh etcd: a full
snapshot at start, then the deltas of the puts, gzip in S3), smaller: a 64 MiB db and 100,000
events. A restore to the middle replays half of the events and fetches half of the deltas (the one
holding the target is read whole, its later events skipped), so it should take about the full part
plus half the delta time.
"""

from __future__ import annotations

import json
import shutil

from bench.common import Ctx, MiB, Row, check_free, etcd_bin_dir, log, median, run_driver, s3, save_raw, secs
from bench.restore import generate

NAME = "pitr"


def run(ctx: Ctx) -> list[Row]:
    full_size = ctx.size(64 * MiB, 16 * MiB)
    events = ctx.count(100_000, 10_000)
    check_free(ctx.work, 6 * full_size + 2 * 2**30)
    mids, ends = [], []
    with s3(ctx) as s:
        bucket = s.bucket("pitr")
        gen = generate(ctx, s, bucket, full_size, events)
        spec = json.dumps(s.store_spec(bucket))
        target = ctx.work / "pitr-target"
        try:
            middle = None
            for i in range(ctx.repeats):
                for runs, to in ((ends, None), (mids, "middle")):
                    shutil.rmtree(target, ignore_errors=True)
                    args = ["--store", spec, "--data-dir", str(target), "--etcd-bin-dir", str(etcd_bin_dir())]
                    if to and middle:
                        args += ["--to-revision", str(middle)]
                    r = run_driver("restore", args, s.env())
                    if middle is None:  # from the first restore to the end: the chain's revisions
                        middle = (r["full_revision"] + r["revision"]) // 2
                    runs.append(r)
                    log(f"{NAME} run {i + 1} ({to or 'end'}): {r['seconds']:.2f}s to revision {r['revision']} "
                        f"({r['deltas']} deltas), phases {r['phases']}")
        finally:
            shutil.rmtree(target, ignore_errors=True)
    assert all(r["revision"] == middle for r in mids), [r["revision"] for r in mids]
    save_raw(NAME, {"generated": gen, "middle": middle, "to_middle": mids, "to_end": ends})
    mid, end = median([r["seconds"] for r in mids]), median([r["seconds"] for r in ends])
    first = ends[0]
    n_end, n_mid = first["revision"] - first["full_revision"], middle - first["full_revision"]
    return [Row(name=f"restore to a revision in the middle of a chain ({n_mid:,} of {n_end:,} events; "
                     f"{gen['db_size'] / MiB:.0f} MiB db, S3) vs to its end",
                ours=f"{secs(mid)} to the middle ({mids[0]['deltas']} deltas)",
                peer=f"{secs(end)} to the end ({first['deltas']} deltas), ours too", ratio=f"{mid / end:.2f}×",
                target="(no target)")]
