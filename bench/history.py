"""``snapshot history`` over a chain of >= 1,000,000 events: time and peak memory of the search
for one key (which revision deleted it?), every delta streamed and its trailer checked.

The chain is synthetic (deltas written by the tool's own encoder into a Local store, gzip, 20,000
events of 256-byte values each, as a 10 MiB delta limit cuts them): history reads deltas only, and
a real etcd would take minutes to produce a million events. Peak RSS at a tenth of the size is
measured too: flat memory means the two are about equal. No peer tool searches backups.
"""

from __future__ import annotations

import json
import shutil

from bench.common import Ctx, Row, check_free, log, median, mib, run_driver, save_raw, secs

NAME = "history"
KEY = "/registry/namespaces/prod"
TARGET_RSS_MIB = 150


def chain(ctx: Ctx, events: int) -> str:
    where = ctx.work / f"history-{events}"
    spec = json.dumps({"provider": "Local", "container": str(where), "prefix": "etcd"})
    done = where / "generated.json"
    if not done.exists():  # cached between runs, as the other benchmarks cache their dbs
        shutil.rmtree(where, ignore_errors=True)
        where.mkdir(parents=True)
        gen = run_driver("history", ["--store", spec, "--key", KEY, "--generate", str(events)])
        done.write_text(json.dumps(gen))
        log(f"{NAME}: generated {gen}")
    return spec


def run(ctx: Ctx) -> list[Row]:
    big = ctx.count(1_000_000, 100_000)
    small = big // 10
    check_free(ctx.work, big * 40)
    results = {}
    for events in (small, big):
        spec = chain(ctx, events)
        runs = [run_driver("history", ["--store", spec, "--key", KEY]) for _ in range(ctx.repeats)]
        for r in runs:
            assert r["events_read"] == events and len(r["deletes"]) == 1, r
        results[events] = runs
        log(f"{NAME} {events} events: {[r['seconds'] for r in runs]} s, rss {[r['peak_rss_mib'] for r in runs]} MiB")
    save_raw(NAME, {str(k): v for k, v in results.items()})
    took = median([r["seconds"] for r in results[big]])
    rss_big = median([r["peak_rss_mib"] for r in results[big]])
    rss_small = median([r["peak_rss_mib"] for r in results[small]])
    return [
        Row(name=f"snapshot history: one key in {big:,} events ({big // 20_000} deltas, gzip, Local store)",
            ours=f"{secs(took)} ({big / took:,.0f} events/s)", target="(no target)"),
        Row(name="snapshot history: peak RSS", ours=f"{mib(rss_small)} at {small:,} events, {mib(rss_big)} at "
            f"{big:,}", ratio=f"{rss_big / rss_small:.2f}× ({big:,} / {small:,})",
            target=f"≤ {TARGET_RSS_MIB} MiB, flat", met=rss_big <= TARGET_RSS_MIB and rss_big <= 1.2 * rss_small),
    ]
