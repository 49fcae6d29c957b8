"""Seconds from a snapshot's upload on the primary (S3) to its verified presence on the secondary
(GCS emulator), over 100 snapshots: one full, then deltas every second while etcd takes ~200
puts/s. The copier runs as in the server: notified by the snapshotter, verifying each copy."""

from __future__ import annotations

import json

from bench import profiling
from bench.common import Ctx, Row, etcd, gcs, log, median, pct, run_driver, s3, save_raw

NAME = "secondary_lag"
TARGET_P99 = 5.0


def run(ctx: Ctx) -> list[Row]:
    count = ctx.count(100, 15)
    runs = []
    with s3(ctx) as s, gcs(ctx) as g:
        for i in range(ctx.repeats):
            with etcd() as srv:
                p = json.dumps(s.store_spec(s.bucket("lag-primary")))
                q = json.dumps(g.store_spec(g.bucket("lag-secondary")))
                prof = ctx.work / f"profile-{NAME}.speedscope.json" if ctx.profile and i == 0 else None
                r = run_driver(NAME, ["--endpoint", srv.client_url, "--primary", p, "--secondary", q,
                                      "--count", str(count)], s.env(), profile_to=prof)
            lags = [lag for _, lag in r["lags"] if lag is not None]
            if r["missing_on_secondary"] or r["never_copied"]:
                raise RuntimeError(f"snapshots not on the secondary: {r['missing_on_secondary'] or r['never_copied']}")
            r["p50"], r["p99"], r["max"] = median(lags), pct(lags, 99), max(lags)
            runs.append(r)
            log(f"{NAME} run {i + 1}: {r['snapshots']} snapshots, lag p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s "
                f"max {r['max']:.2f}s, rss {r['peak_rss_mib']} MiB")
            if prof:
                log(profiling.summary(prof))
    save_raw(NAME, {"count": count, "runs": runs})
    p50, p99, mx = (median([r[k] for r in runs]) for k in ("p50", "p99", "max"))
    return [Row(
        name=f"secondary lag, {count} snapshots S3 → GCS emulator (upload → verified copy)",
        ours=f"p99 {p99:.2f} s (p50 {p50:.2f} s, max {mx:.2f} s)",
        target=f"p99 ≤ {TARGET_P99:g} s",
        met=p99 <= TARGET_P99,
        raw={"p50": p50, "p99": p99, "max": mx},
    )]
