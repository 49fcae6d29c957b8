"""Delta ingest: the sustained put rate a pipelined client gets from etcd (256 puts in flight,
256-byte values, fresh keys) with our delta snapshotter running against it and uploading to S3,
against the same etcd without the snapshotter. Each run starts a fresh etcd; the two sides
alternate. Also: the snapshotter's watch lag during the load and its catch-up time after it.

Against the Go tool: the same load while the Go ``etcdbrctl snapshot`` watches (deltas on, its
default 20 s period, uploading to the same S3 server), started and made ready (full snapshot
taken, watch applied) before the load as ours is.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from bench import profiling
from bench.common import (GO_FULL_SAVED, Ctx, Row, etcd, etcdctl, go_etcdbrctl, go_skipped, go_snapshotter, log,
                          median, pct, run_driver, run_driver_during, s3, save_raw)

NAME = "delta_ingest"
MAX_LOSS = 0.10
MAX_LAG = 1.0


def load(srv, duration: float) -> dict:
    return run_driver("load", ["--endpoint", srv.client_url, "--duration", str(duration), "--window", "256"])


def with_snapshotter(ctx: Ctx, s, duration: float, i: int, profile: bool) -> tuple[dict, dict]:
    with etcd() as srv:
        spec = json.dumps(s.store_spec(s.bucket("ingest")))
        prof = ctx.work / f"profile-{NAME}.speedscope.json" if profile else None
        l, d = run_driver_during("delta_ingest", ["--endpoint", srv.client_url, "--store", spec], s.env(),
                                 lambda: load(srv, duration), ready=ctx.work / f"ingest-ready-{i}",
                                 stop=ctx.work / f"ingest-stop-{i}", profile_to=prof, timeout=300)
        if prof is not None:
            d["profile"] = str(prof)
        return l, d


def with_go_tool(ctx: Ctx, s, binary, duration: float, i: int) -> dict:
    """The load while the Go etcdbrctl snapshotter watches (deltas on)."""
    with etcd() as srv:
        proc = go_snapshotter(binary, srv.client_url, s, s.bucket("ingest-go"), "etcd", ctx.work / f"go-tmp-{i}",
                              delta_period="20s")
        try:
            proc.wait_for(GO_FULL_SAVED, timeout=120)
            proc.wait_for("Applied watch on etcd", timeout=120)
            cpu0 = proc.cpu_seconds()
            result = load(srv, duration)
            time.sleep(1.0)  # what it still has to take in (ours: its catch-up, measured alike)
            result["go_cpu_during_load"] = round(proc.cpu_seconds() - cpu0, 2)
        finally:
            proc.stop()
        result["go_peak_rss_mib"] = round(proc.peak_mib, 1)
        return result


def with_go_watcher(ctx: Ctx, duration: float) -> tuple[dict, float]:
    """The same load with ``etcdctl watch`` (Go) consuming every event: etcd's own cost of serving
    a whole-keyspace watch, and how far a Go consumer falls behind. Returns (load, catch-up s)."""
    out = ctx.work / "etcdctl-watch.out"
    with etcd() as srv:
        rev = int(srv.status()["header"]["revision"]) + 1
        with open(out, "wb") as fh:
            watcher = subprocess.Popen([etcdctl(), f"--endpoints={srv.client_url}", "watch", "--prefix", "",
                                        f"--rev={rev}", "-w", "json"], stdout=fh, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            l = load(srv, duration)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 300:
                with open(out, "rb") as fh:
                    fh.seek(max(0, out.stat().st_size - 256 * 1024))
                    revs = [int(x) for x in re.findall(rb'"mod_revision":(\d+)', fh.read())]
                if revs and max(revs) >= l["revision"]:
                    break
                time.sleep(0.05)
            return l, time.monotonic() - t0
        finally:
            watcher.kill()
            watcher.wait()
            out.unlink(missing_ok=True)


def run(ctx: Ctx) -> list[Row]:
    duration = 8.0 if ctx.quick else 30.0
    base, ours, drivers, go, go_tool = [], [], [], [], []
    binary = go_etcdbrctl()
    with s3(ctx) as s:
        for i in range(ctx.repeats):
            with etcd() as srv:
                b = load(srv, duration)
            l, d = with_snapshotter(ctx, s, duration, i, False)
            if binary is not None:
                t = with_go_tool(ctx, s, binary, duration, i)
                go_tool.append(t)
                log(f"{NAME} run {i + 1}: with the Go etcdbrctl snapshotter watching {t['rate']:.0f} puts/s "
                    f"(its rss {t['go_peak_rss_mib']} MiB, cpu {t['go_cpu_during_load']}s for "
                    f"{t['puts']} puts)")
            g, g_catch = with_go_watcher(ctx, duration)
            go.append({"rate": g["rate"], "catch_up_seconds": g_catch})
            base.append(b["rate"])
            ours.append(l["rate"])
            d["events"] = l["puts"]
            d.update(p99_lag=pct(d["lags"], 99), max_lag=max(d["lags"]))
            drivers.append(d)
            log(f"{NAME} run {i + 1}: alone {b['rate']:.0f} puts/s, with snapshotter {l['rate']:.0f} puts/s, "
                f"lag p99 {d['p99_lag']:.2f}s max {d['max_lag']:.2f}s, catch-up {d['catch_up_seconds']:.2f}s, "
                f"{d['deltas']} deltas, snapshotter rss {d['peak_rss_mib']} MiB cpu {d['cpu_seconds']}s; "
                f"with etcdctl watch {g['rate']:.0f} puts/s, catch-up {g_catch:.2f}s")
        if ctx.profile:
            _, d = with_snapshotter(ctx, s, duration, 99, True)
            log(profiling.summary(d["profile"]))
    for d in drivers:
        d.pop("uploads", None)
    save_raw(NAME, {"duration": duration, "alone": base, "with": ours, "drivers": drivers, "etcdctl_watch": go,
                    "go_etcdbrctl": go_tool})
    g_rate = median([x["rate"] for x in go])
    g_catch = median([x["catch_up_seconds"] for x in go])
    b, o = median(base), median(ours)
    lag99 = median([d["p99_lag"] for d in drivers])
    lagmax = median([d["max_lag"] for d in drivers])
    catch = median([d["catch_up_seconds"] for d in drivers])
    loss = 1 - o / b
    go_name = f"delta ingest: etcd's put rate while the tool watches (deltas on, {duration:.0f} s, 256 in flight)"
    if go_tool:
        t = median([x["rate"] for x in go_tool])
        # On a busy machine the put rates swing more than the tools differ; the watcher's CPU per
        # event is what takes cores from etcd, and it holds still.
        o_cpu = median([d["cpu_during_load"] / max(1, d["events"]) * 1e6 for d in drivers])
        g_cpu = median([x["go_cpu_during_load"] / max(1, x["puts"]) * 1e6 for x in go_tool])
        go_row = Row(name=go_name, ours=f"{o:.0f} puts/s with ours ({o_cpu:.0f} µs CPU per event)",
                     peer=f"{t:.0f} puts/s with Go etcdbrctl ({g_cpu:.0f} µs CPU per event)",
                     ratio=f"{o / t:.2f}× (CPU per event {o_cpu / g_cpu:.2f}×)", target="≥ 1×", met=o >= t)
    else:
        go_row = go_skipped(go_name)
    return [go_row,
        Row(name=f"delta ingest: put rate with the delta snapshotter running ({duration:.0f} s, 256 in flight)",
            ours=f"{o:.0f} puts/s ({loss:.0%} loss)", peer=f"{b:.0f} puts/s, same etcd alone",
            ratio=f"{o / b:.2f}×", target=f"loss ≤ {MAX_LOSS:.0%}", met=loss <= MAX_LOSS),
        Row(name="delta ingest: same load with `etcdctl watch` (Go) as the only watcher (etcd's own watch cost)",
            ours=f"{o:.0f} puts/s with ours", peer=f"{g_rate:.0f} puts/s with etcdctl watch", ratio=f"{o / g_rate:.2f}×",
            target="(reference)"),
        Row(name="delta ingest: watch lag during that load (catch-up = time to collect the last put after the load)",
            ours=f"p99 {lag99:.2f} s (max {lagmax:.2f} s, catch-up {catch:.2f} s)",
            peer=f"etcdctl watch catch-up {g_catch:.2f} s", ratio=f"{catch / g_catch:.2f}× (catch-up)" if g_catch else "—",
            target=f"≤ {MAX_LAG:g} s", met=lag99 <= MAX_LAG),
    ]
