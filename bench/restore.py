"""Restore of one full snapshot (~256 MiB db) plus deltas of 150,000 events from S3 (gzip), side
by side with the Go tool's ``etcdbrctl restore`` of the same chain, and ``etcdutl snapshot
restore`` of the same full snapshot alone (from a local file).

The chain is made by our snapshotter: a fresh etcd filled to 256 MiB, the full snapshot at
start, then the deltas of 150,000 puts (gzip, the default compression). The full part of ours is
fetch + decompress + ``etcdutl snapshot restore``; the delta part is fetching, decoding and
replaying every event (``--delta-replay=direct``, the default, and ``etcd`` for reference),
reported as events per second. The Go tool's phases come from its log (bench/drivers/go_restore.py).
Runs are interleaved: etcdutl, ours, Go, ours through etcd, then again.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from bench import profiling
from bench.common import (GiB, MiB, Ctx, Row, check_free, etcd, etcd_bin_dir, etcdutl, fill_etcd, go_etcdbrctl, log,
                          median, ratio, run_driver, run_driver_during, s3, save_raw, secs, timed)

NAME = "restore"
TARGET_FULL = 1.3
TARGET_EVENTS = 30_000
TARGET_GO_TIME = 0.5    # whole restore: at most half the Go tool's time
TARGET_GO_RATE = 2.0    # delta replay: at least twice the Go tool's rate


def generate(ctx: Ctx, s, bucket: str, full_size: int, events: int) -> dict:
    with etcd() as srv:
        t0 = time.monotonic()
        filled = fill_etcd(srv.client_url, full_size)
        spec = json.dumps(s.store_spec(bucket))
        load, d = run_driver_during(
            "delta_ingest", ["--endpoint", srv.client_url, "--store", spec, "--flush"], s.env(),
            lambda: run_driver("load", ["--endpoint", srv.client_url, "--duration", "3600", "--count", str(events),
                                        "--window", "128"]),
            ready=ctx.work / "restore-gen-ready", stop=ctx.work / "restore-gen-stop", ready_timeout=600)
    info = {"db_size": filled["db_size"], "puts": load["puts"], "final_revision": load["revision"],
            "deltas": d["deltas"], "seconds": round(time.monotonic() - t0, 1)}
    log(f"{NAME}: chain generated: {info}")
    return info


def fetch_full(s, bucket: str, path) -> dict:
    """The full snapshot as a plain db file for the peer (not timed)."""
    from bench.drivers._util import store_config
    from etcdbr.restore.restorer import fetch_to_file
    from etcdbr.snapshot import latest_chain
    from etcdbr.snapstore import open_store

    os.environ.update(s.env())
    store = open_store(store_config(s.store_spec(bucket)))
    try:
        full, deltas = latest_chain(store.list())
        size = fetch_to_file(store, full, path)
        return {"full": full.snap_name, "full_revision": full.last_revision, "db_bytes": size,
                "stored_bytes": full.size, "deltas": len(deltas)}
    finally:
        store.close()


def etcd_ceiling(seconds: float = 5.0) -> dict:
    """Put rates of a fresh etcd on this machine, one request at a time (what a replay of one
    transaction per revision can reach at best) and 256 in flight (the ceiling for any replay
    through etcd's API)."""
    out = {}
    for window in (1, 256):
        with etcd() as srv:
            out[window] = run_driver("load", ["--endpoint", srv.client_url, "--duration", str(seconds),
                                              "--window", str(window)])["rate"]
    return out


def _ours(s, spec: str, target, mode: str, profile_to=None) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    r = run_driver("restore", ["--store", spec, "--data-dir", str(target), "--etcd-bin-dir", str(etcd_bin_dir()),
                               "--delta-replay", mode], s.env(), profile_to=profile_to)
    shutil.rmtree(target, ignore_errors=True)
    r["events"] = r["revision"] - r["full_revision"]
    r["events_per_second"] = r["events"] / r["phases"]["deltas"]
    return r


def run(ctx: Ctx) -> list[Row]:
    full_size = ctx.size(256 * MiB, 32 * MiB)
    events = ctx.count(150_000, 20_000)
    check_free(ctx.work, 6 * full_size + GiB)
    go = go_etcdbrctl()
    if go is None:
        log(f"{NAME}: no Go build given ($BENCH_GO_ETCDBRCTL): the rows against the Go tool are skipped")
    runs, through_etcd, peer_runs, go_runs = [], [], [], []
    with s3(ctx) as s:
        bucket = s.bucket("restore")
        gen = generate(ctx, s, bucket, full_size, events)
        db = ctx.work / "restore-full.db"
        gen.update(fetch_full(s, bucket, db))
        spec = json.dumps(s.store_spec(bucket))
        target = ctx.work / "restore-target"
        try:
            for i in range(ctx.repeats):
                shutil.rmtree(target, ignore_errors=True)
                peer_runs.append(timed([etcdutl(), "snapshot", "restore", str(db), "--data-dir", str(target)]))
                shutil.rmtree(target, ignore_errors=True)
                prof = ctx.work / f"profile-{NAME}.speedscope.json" if ctx.profile and i == ctx.repeats - 1 else None
                r = _ours(s, spec, target, "direct", prof)
                runs.append(r)
                log(f"{NAME} run {i + 1}: etcdutl {peer_runs[-1]:.2f}s; ours {r['seconds']:.2f}s (full part "
                    f"{r['full_part']:.2f}s, deltas {r['events']} events in {r['phases']['deltas']:.1f}s: "
                    f"{r['events_per_second']:.0f}/s), phases {r['phases']}, rss {r['peak_rss_mib']} MiB")
                if prof:
                    r["profile"] = str(prof)
                    log(profiling.summary(prof))
                if go is not None:
                    g = run_driver("go_restore", ["--binary", str(go), "--store", spec, "--data-dir", str(target)],
                                   s.env())
                    shutil.rmtree(target, ignore_errors=True)
                    shutil.rmtree(str(target) + ".tmp", ignore_errors=True)
                    g["events_per_second"] = r["events"] / g["phases"]["deltas"]
                    go_runs.append(g)
                    log(f"{NAME} run {i + 1}: Go {g['seconds']:.2f}s, phases {g['phases']} "
                        f"({g['events_per_second']:.0f} events/s)")
                e = _ours(s, spec, target, "etcd")
                through_etcd.append(e)
                log(f"{NAME} run {i + 1}: ours through etcd {e['seconds']:.2f}s ({e['events_per_second']:.0f} events/s)")
        finally:
            db.unlink(missing_ok=True)
            shutil.rmtree(target, ignore_errors=True)
    ceiling = etcd_ceiling()
    log(f"{NAME}: etcd put rate here: {ceiling[1]:.0f}/s one at a time, {ceiling[256]:.0f}/s with 256 in flight")
    save_raw(NAME, {"generated": gen, "ours": runs, "ours_through_etcd": through_etcd, "go": go_runs,
                    "peer": peer_runs, "etcd_put_rate": ceiling})
    full = median([r["full_part"] for r in runs])
    peer = median(peer_runs)
    eps = median([r["events_per_second"] for r in runs])
    total = median([r["seconds"] for r in runs])
    eps_etcd = median([r["events_per_second"] for r in through_etcd])
    total_etcd = median([r["seconds"] for r in through_etcd])
    n_events = runs[0]["events"]
    what = f"{gen['db_bytes'] / MiB:.0f} MiB full + {n_events:,} events in {runs[0]['deltas']} deltas, S3, gzip"
    rows = [
        Row(name=f"restore: full part ({gen['db_bytes'] / MiB:.0f} MiB db, gzip in S3: fetch + gunzip + etcdutl)",
            ours=secs(full), peer=f"{secs(peer)} etcdutl snapshot restore (local file)", ratio=ratio(full, peer),
            target=f"≤ {TARGET_FULL}×", met=full / peer <= TARGET_FULL),
    ]
    if go_runs:
        go_total = median([g["seconds"] for g in go_runs])
        go_eps = median([g["events_per_second"] for g in go_runs])
        rows += [
            Row(name=f"restore: whole restore ({what})", ours=secs(total), peer=f"{secs(go_total)} Go etcdbrctl restore",
                ratio=ratio(total, go_total), target=f"≤ {TARGET_GO_TIME}×", met=total / go_total <= TARGET_GO_TIME),
            Row(name="restore: ↳ delta replay rate (ratio: ours / Go)", ours=f"{eps:,.0f} events/s",
                peer=f"{go_eps:,.0f} events/s Go etcdbrctl restore", ratio=f"{eps / go_eps:.2f}×",
                target=f"≥ {TARGET_GO_RATE}×", met=eps / go_eps >= TARGET_GO_RATE),
        ]
    else:
        rows.append(Row(name=f"restore: whole restore ({what}) against the Go tool",
                        ours=secs(total), peer="skipped: no Go build ($BENCH_GO_ETCDBRCTL)"))
    rows += [
        Row(name=f"restore: deltas ({n_events:,} events in {runs[0]['deltas']} deltas)",
            ours=f"{eps:,.0f} events/s (whole restore {secs(total)})",
            peer=f"etcd alone: {ceiling[1]:,.0f} puts/s one at a time, {ceiling[256]:,.0f}/s pipelined",
            target=f"≥ {TARGET_EVENTS:,} events/s", met=eps >= TARGET_EVENTS),
        Row(name="restore: deltas replayed through a temporary etcd (--delta-replay=etcd, reference)",
            ours=f"{eps_etcd:,.0f} events/s (whole restore {secs(total_etcd)})", peer="—", target="(reference)"),
    ]
    return rows
