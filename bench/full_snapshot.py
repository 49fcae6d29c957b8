"""Full snapshot of a >= 1 GiB db to the S3 server (compression off, then gzip) against the Go
``etcdbrctl snapshot`` doing the same (its first full snapshot, into another prefix of the same
bucket), and against ``etcdctl snapshot save`` to local disk; same etcd, same data, same run,
interleaved.

The Go tool's time is from its process start to its log line "Successfully saved full snapshot"
(its start-up, ~0.1 s, included; its own "Total time to save" figure is kept in the raw JSON), its
peak RSS its ``VmHWM`` at that line. Ours is the driver's (below) and its ``VmHWM``.

Ours is timed inside the driver process from opening the etcd connection to the end of the upload
(the daemon takes snapshots in a long-running process, so interpreter start-up is excluded and
reported in the raw JSON as ``process_seconds``). The peer's figure is the wall time of the
etcdctl process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench import profiling
from bench.common import (GO_FULL_SAVED, GiB, MiB, Ctx, Row, etcd_with_db, etcdctl, go_etcdbrctl, go_skipped,
                          go_snapshotter, log, median, mib, ratio, run_driver, s3, save_raw, secs, timed)

NAME = "full_snapshot"
TARGET = 1.15
TARGET_GO = 0.8  # compression off: at most this share of the Go tool's time


def ours(srv, s, bucket: str, prefix: str, compression: str, profile_to: Path | None = None) -> dict:
    spec = json.dumps(s.store_spec(bucket, prefix))
    return run_driver("full_snapshot", ["--endpoint", srv.client_url, "--store", spec, "--compression", compression],
                      s.env(), profile_to=profile_to)


def peer(srv, out: Path) -> float:
    out.unlink(missing_ok=True)
    try:
        return timed([etcdctl(), f"--endpoints={srv.client_url}", "snapshot", "save", str(out)],
                     env=dict(os.environ, ETCDCTL_API="3"))
    finally:
        out.unlink(missing_ok=True)
        Path(str(out) + ".part").unlink(missing_ok=True)


def peer_to_s3(srv, s, bucket: str, out: Path, key: str) -> float:
    """The Go tools doing what we do: ``etcdctl snapshot save`` then ``rclone copyto`` into S3."""
    env = dict(os.environ, **s.rclone_env("S3"), RCLONE_CONFIG=str(out.parent / "rclone-none.conf"))
    env.pop("AWS_CA_BUNDLE", None)
    out.unlink(missing_ok=True)
    try:
        took = timed([etcdctl(), f"--endpoints={srv.client_url}", "snapshot", "save", str(out)],
                     env=dict(os.environ, ETCDCTL_API="3"))
        return took + timed(["rclone", "copyto", str(out), f"S3:{bucket}/{key}", "--stats", "0"], env=env)
    finally:
        out.unlink(missing_ok=True)


def go_tool(binary, srv, s, bucket: str, prefix: str, compression: str, tmp: Path) -> dict:
    """The Go tool's first full snapshot: seconds to its "saved" line, peak RSS then."""
    import re

    proc = go_snapshotter(binary, srv.client_url, s, bucket, prefix, tmp, compression=compression)
    try:
        at, _ = proc.wait_for(GO_FULL_SAVED, timeout=3600)
        peak = proc.peak_mib
    finally:
        proc.stop()
    own = [float(m.group(1)) for _, line in proc.lines
           if (m := re.search(r"Total time to save Full snapshot: ([0-9.]+) seconds", line))]
    return {"seconds": round(at, 3), "peak_rss_mib": round(peak, 1), "own_seconds": own[0] if own else None}


def measure(ctx: Ctx, size: int, compressions=("none", "gzip"), with_peer: bool = True) -> dict:
    """Runs of ours (per compression) and of the peers against one etcd of ``size``; raw figures."""
    runs: dict[str, list[dict]] = {c: [] for c in compressions}
    go_runs: dict[str, list[dict]] = {c: [] for c in compressions}
    go = go_etcdbrctl() if with_peer else None
    peer_runs: list[float] = []
    go_s3_runs: list[float] = []
    with s3(ctx) as s, etcd_with_db(ctx, size) as (srv, info):
        bucket = s.bucket("full")
        snap_file = ctx.work / "etcdctl-snapshot.db"
        for i in range(ctx.repeats):
            if with_peer:
                peer_runs.append(peer(srv, snap_file))
                go_s3_runs.append(peer_to_s3(srv, s, bucket, snap_file, f"go-{i}.db"))
                log(f"{NAME} {size // MiB}M run {i + 1}: etcdctl {peer_runs[-1]:.2f}s, "
                    f"etcdctl + rclone copyto {go_s3_runs[-1]:.2f}s")
            for c in compressions:
                r = ours(srv, s, bucket, f"run{i}-{c}", c)
                runs[c].append(r)
                log(f"{NAME} {size // MiB}M run {i + 1}: ours ({c}) {r['seconds']:.2f}s rss {r['peak_rss_mib']} MiB")
                if go is not None:
                    g = go_tool(go, srv, s, bucket, f"go{i}-{c}", c, ctx.work / "go-tmp")
                    go_runs[c].append(g)
                    log(f"{NAME} {size // MiB}M run {i + 1}: Go ({c}) {g['seconds']:.2f}s "
                        f"(own figure {g['own_seconds']}s) rss {g['peak_rss_mib']} MiB")
            s.empty(bucket)
        prof = None
        if ctx.profile and "none" in compressions:
            prof = ctx.work / f"profile-{NAME}-{size // MiB}M.speedscope.json"
            ours(srv, s, bucket, "profiled", "none", profile_to=prof)
    return {"size": size, "db": info, "ours": runs, "go": go_runs if go is not None else None, "peer": peer_runs,
            "go_to_s3": go_s3_runs, "profile": str(prof) if prof else None}


def go_rows(raw: dict) -> list[Row]:
    """Ours against the Go tool: time per compression, peak RSS."""
    gib = raw["db"]["db_size"] / GiB
    names = {c: f"full snapshot {gib:.2f} GiB → S3, compression {'off' if c == 'none' else c}, against Go etcdbrctl"
             for c in ("none", "gzip")}
    rss_name = "peak RSS during the full snapshot (compression off / gzip), against Go etcdbrctl"
    if not raw.get("go"):
        return [go_skipped(names["none"]), go_skipped(names["gzip"]), go_skipped(rss_name)]
    rows = []
    for c in ("none", "gzip"):
        o = median([r["seconds"] for r in raw["ours"][c]])
        g = median([r["seconds"] for r in raw["go"][c]])
        rows.append(Row(name=names[c], ours=secs(o), peer=f"{secs(g)} Go etcdbrctl snapshot", ratio=ratio(o, g),
                        target=f"≤ {TARGET_GO}×" if c == "none" else "(no target)",
                        met=(o / g <= TARGET_GO) if c == "none" else None))
    o_rss = {c: median([r["peak_rss_mib"] for r in raw["ours"][c]]) for c in ("none", "gzip")}
    g_rss = {c: median([r["peak_rss_mib"] for r in raw["go"][c]]) for c in ("none", "gzip")}
    rows.append(Row(name=rss_name, ours=f"{mib(o_rss['none'])} / {mib(o_rss['gzip'])}",
                    peer=f"{mib(g_rss['none'])} / {mib(g_rss['gzip'])}",
                    ratio=f"{o_rss['none'] / g_rss['none']:.2f}× / {o_rss['gzip'] / g_rss['gzip']:.2f}×",
                    target="≤ 1×", met=all(o_rss[c] <= g_rss[c] for c in o_rss)))
    return rows


def run(ctx: Ctx) -> list[Row]:
    size = ctx.size(GiB, 64 * MiB)
    raw = measure(ctx, size)
    ctx.shared[("full", size)] = raw
    save_raw(NAME, raw)
    p = median(raw["peer"])
    rows = []
    for c in ("none", "gzip"):
        o = median([r["seconds"] for r in raw["ours"][c]])
        stored = median([r["stored_bytes"] for r in raw["ours"][c]])
        met = (o / p <= TARGET) if c == "none" else None
        rows.append(Row(
            name=f"full snapshot {raw['db']['db_size'] / GiB:.2f} GiB → S3, compression {'off' if c == 'none' else c}",
            ours=f"{secs(o)} ({mib(stored / MiB)} stored)",
            peer=f"{secs(p)} etcdctl snapshot save",
            ratio=ratio(o, p),
            target=f"≤ {TARGET}×" if c == "none" else "(no target)",
            met=met,
        ))
    o = median([r["seconds"] for r in raw["ours"]["none"]])
    g = median(raw["go_to_s3"])
    rows.append(Row(
        name="full snapshot → S3, compression off, against the Go tools doing the same (save, then upload)",
        ours=secs(o), peer=f"{secs(g)} etcdctl snapshot save + rclone copyto", ratio=ratio(o, g),
        target="(reference)"))
    rows += go_rows(raw)
    if raw["profile"]:
        log(profiling.summary(raw["profile"]))
    return rows
