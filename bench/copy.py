"""Copy 200 snapshots of 4 MiB from one bucket to another: two buckets on the S3 server (our
copier copies server-side there), then S3 → GCS emulator (bytes stream through). Peer:
``rclone sync`` with its default ``--transfers`` (4), then with ours (``--backup-sync-concurrent-copies``
default, 10). Every run copies into a fresh, empty destination bucket.

Ours verifies every copy by reading source and destination back (sha256) by default, and with
``--backup-sync-verify=metadata`` (a row of its own) compares the service's size and ETag of both
objects, which is what rclone checks. Ours is timed inside the driver (open stores, list, copy, verify); rclone
is the wall time of its process.

On the two S3 buckets the Go ``etcdbrctl copy`` runs too (its default 10 parallel copies; it
streams every object through itself, source to destination, and checks nothing afterwards): wall
time of its process and its peak RSS (``VmHWM``), against ours verified by content and by
metadata and our driver's ``VmHWM``.
"""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

from bench import profiling
from bench.common import (LoggedProcess, MiB, Ctx, Row, gcs, go_env, go_etcdbrctl, go_s3_flags, go_skipped, log,
                          median, mib, ratio, run_driver, s3, save_raw, secs, timed)

NAME = "copy"
TARGET = 0.8
CONCURRENCY = 10  # SyncConfig.concurrent_copies default
RCLONE_DEFAULT_TRANSFERS = 4


def seed(s, bucket: str, count: int, size: int, prefix: str = "etcd/v2") -> int:
    from etcdbr.snapshot import Kind, new_snapshot

    t0 = datetime.now(timezone.utc) - timedelta(hours=1)
    snaps = [new_snapshot(Kind.FULL, 0, 1000, prefix=prefix, compression_suffix=".gz", created_on=t0)]
    rev = 1001
    for i in range(1, count):
        snaps.append(new_snapshot(Kind.INCR, rev, rev + 99, prefix=prefix, compression_suffix=".gz",
                                  created_on=t0 + timedelta(seconds=10 * i)))
        rev += 100
    client = s.client()

    def put(snap) -> None:
        client.put_object(Bucket=bucket, Key=snap.key, Body=os.urandom(size))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, snaps))
    return len(snaps)


def rclone(env: dict, src: str, dst: str, transfers: int | None, expect: int) -> float:
    cmd = ["rclone", "sync", src, dst, "--stats", "0", "--retries", "1"]
    if transfers:
        cmd += ["--transfers", str(transfers)]
    took = timed(cmd, env=env)
    # a peer that copied nothing would look fast: count what landed
    out = subprocess.run(["rclone", "size", "--json", dst], capture_output=True, text=True, env=env, check=True)
    got = json.loads(out.stdout)["count"]
    if got != expect:
        raise RuntimeError(f"rclone sync left {got} objects in {dst}, expected {expect}")
    return took


def go_copy(binary, s, src: str, dst: str, expect: int) -> dict:
    """The Go tool's ``copy`` between two buckets: wall seconds and peak RSS of its process."""
    proc = LoggedProcess([binary, "copy", *go_s3_flags(s, dst, "etcd"), *go_s3_flags(s, src, "etcd", source=True)],
                         go_env(s))
    try:
        took = proc.wait()
    finally:
        proc.stop()
    client = s.client()
    got = sum(len(page.get("Contents", [])) for page in client.get_paginator("list_objects_v2").paginate(Bucket=dst))
    if got != expect:  # a peer that copied nothing would look fast
        raise RuntimeError(f"Go etcdbrctl copy left {got} objects in {dst}, expected {expect}")
    return {"seconds": round(took, 3), "peak_rss_mib": round(proc.peak_mib, 1)}


def copy_floor(s, src: str, dst: str, threads: int) -> float:
    """The server-side copies alone: CopyObject of every object with ``threads`` concurrent
    boto3 calls, nothing listed on the destination, nothing verified. What any copier that
    copies server-side pays to this server at least."""
    import time

    client = s.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=src)
            for o in page.get("Contents", [])]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.copy_object(Bucket=dst, Key=k, CopySource={"Bucket": src, "Key": k}), keys))
    return time.perf_counter() - t0


def etag_survives_copy(s, bucket: str) -> bool:
    """Whether this server gives a server-side copy of a multipart object the source's ETag
    ("<md5 of part md5s>-<parts>") instead of one it computed over the copy's bytes: then
    comparing ETags, as rclone does, cannot tell a good copy from a bad one."""
    client = s.client()
    part = os.urandom(5 * MiB)
    upload = client.create_multipart_upload(Bucket=bucket, Key="etag-probe")["UploadId"]
    parts = [{"PartNumber": n, "ETag": client.upload_part(Bucket=bucket, Key="etag-probe", UploadId=upload,
                                                          PartNumber=n, Body=part)["ETag"]} for n in (1, 2)]
    client.complete_multipart_upload(Bucket=bucket, Key="etag-probe", UploadId=upload,
                                     MultipartUpload={"Parts": parts})
    client.copy_object(Bucket=bucket, Key="etag-probe-copy", CopySource={"Bucket": bucket, "Key": "etag-probe"})
    source = client.head_object(Bucket=bucket, Key="etag-probe")["ETag"]
    copy = client.head_object(Bucket=bucket, Key="etag-probe-copy")["ETag"]
    return source == copy and "-" in source


def run(ctx: Ctx) -> list[Row]:
    count = ctx.count(200, 20)
    size = ctx.size(4 * MiB, 1 * MiB)
    raw: dict = {"count": count, "size": size, "pairs": {}}
    go = go_etcdbrctl()
    with s3(ctx) as s, gcs(ctx) as g:
        src = s.bucket("copy-src")
        n = seed(s, src, count, size)
        env = dict(os.environ, **s.rclone_env("S3"), **g.rclone_env("GCS"),
                   RCLONE_CONFIG=str(ctx.work / "rclone-none.conf"))
        env.pop("AWS_CA_BUNDLE", None)
        src_spec = json.dumps(s.store_spec(src))
        pairs = {
            "S3 → S3 (same server)": (lambda: s.bucket("copy-dst"), lambda b: json.dumps(s.store_spec(b)), "S3"),
            "S3 → GCS emulator": (lambda: g.bucket("copy-dst"), lambda b: json.dumps(g.store_spec(b)), "GCS"),
        }
        for label, (new_bucket, spec, remote) in pairs.items():
            res = raw["pairs"][label] = {"ours": [], "rclone_default": [], "rclone_same": [], "floor": [],
                                         "ours_metadata": [], "go": []}
            for i in range(ctx.repeats):
                if remote == "S3":
                    res["floor"].append(copy_floor(s, src, new_bucket(), CONCURRENCY))
                    m = run_driver("copy", ["--src", src_spec, "--dst", spec(new_bucket()), "--concurrency",
                                            str(CONCURRENCY), "--expect", str(n), "--verify", "metadata"], s.env())
                    res["ours_metadata"].append(m)
                b = new_bucket()
                r = run_driver("copy", ["--src", src_spec, "--dst", spec(b), "--concurrency", str(CONCURRENCY),
                                        "--expect", str(n)], s.env())
                res["ours"].append(r)
                b = new_bucket()
                res["rclone_default"].append(rclone(env, f"S3:{src}/etcd", f"{remote}:{b}/etcd", None, n))
                b = new_bucket()
                res["rclone_same"].append(rclone(env, f"S3:{src}/etcd", f"{remote}:{b}/etcd", CONCURRENCY, n))
                if remote == "S3" and go is not None:
                    res["go"].append(go_copy(go, s, src, new_bucket(), n))
                    log(f"{NAME} {label} run {i + 1}: Go etcdbrctl copy {res['go'][-1]['seconds']:.2f}s "
                        f"(rss {res['go'][-1]['peak_rss_mib']} MiB)")
                log(f"{NAME} {label} run {i + 1}: ours {r['seconds']:.2f}s (rss {r['peak_rss_mib']} MiB), "
                    f"rclone {res['rclone_default'][-1]:.2f}s / --transfers {CONCURRENCY} "
                    f"{res['rclone_same'][-1]:.2f}s" + (f", CopyObject alone {res['floor'][-1]:.2f}s, ours with "
                                                        f"--backup-sync-verify=metadata "
                                                        f"{res['ours_metadata'][-1]['seconds']:.2f}s"
                                                        if res["floor"] else ""))
            if ctx.profile:
                prof = ctx.work / f"profile-{NAME}-{remote}.speedscope.json"
                run_driver("copy", ["--src", src_spec, "--dst", spec(new_bucket()), "--concurrency",
                                    str(CONCURRENCY)], s.env(), profile_to=prof)
                res["profile"] = str(prof)
                log(profiling.summary(prof))
        raw["etag_survives_copy"] = etag_survives_copy(s, s.bucket("etag-probe"))
    save_raw(NAME, raw)
    rows = []
    for label, res in raw["pairs"].items():
        o = median([r["seconds"] for r in res["ours"]])
        same_server = "same server" in label
        for key, what in (("rclone_default", f"rclone sync (--transfers {RCLONE_DEFAULT_TRANSFERS})"),
                          ("rclone_same", f"rclone sync --transfers {CONCURRENCY}")):
            p = median(res[key])
            rows.append(Row(
                name=f"copy {count}×{size // MiB} MiB, {label}",
                ours=f"{secs(o)} ({CONCURRENCY} concurrent, verified)",
                peer=f"{secs(p)} {what}",
                ratio=ratio(o, p),
                target=f"≤ {TARGET}×" if same_server else "(no target)",
                met=(o / p <= TARGET) if same_server else None,
            ))
        if res.get("ours_metadata"):
            o = median([r["seconds"] for r in res["ours_metadata"]])
            for key, what in (("rclone_default", f"rclone sync (--transfers {RCLONE_DEFAULT_TRANSFERS})"),
                              ("rclone_same", f"rclone sync --transfers {CONCURRENCY}")):
                p = median(res[key])
                rows.append(Row(
                    name=f"copy {count}×{size // MiB} MiB, {label}, --backup-sync-verify=metadata (size + ETag, "
                         f"rclone's check)",
                    ours=f"{secs(o)} ({CONCURRENCY} concurrent)",
                    peer=f"{secs(p)} {what}",
                    ratio=ratio(o, p),
                    target=f"≤ {TARGET}×",
                    met=o / p <= TARGET,
                ))
        if res.get("floor"):
            f = median(res["floor"])
            p = median(res["rclone_same"])
            rows.append(Row(
                name=f"copy {count}×{size // MiB} MiB, {label}: the server-side copies alone (CopyObject, "
                     f"{CONCURRENCY} concurrent, nothing verified)",
                ours=secs(f), peer=f"{secs(p)} rclone sync --transfers {CONCURRENCY}", ratio=ratio(f, p),
                target="(reference: the floor)", met=None,
            ))
    rows += go_rows(raw, count, size)
    if "etag_survives_copy" in raw:
        log(f"{NAME}: a server-side copy of a multipart object keeps the source's ETag: {raw['etag_survives_copy']}")
    return rows


def go_rows(raw: dict, count: int, size: int) -> list[Row]:
    label = "S3 → S3 (same server)"
    res = raw["pairs"].get(label)
    what = f"copy {count}×{size // MiB} MiB, {label}"
    names = (f"{what}, verified by content, against Go etcdbrctl copy",
             f"{what}, --backup-sync-verify=metadata, against Go etcdbrctl copy",
             f"peak RSS during the {what}, against Go etcdbrctl copy")
    if not res or not res.get("go"):
        return [go_skipped(n) for n in names]
    g = median([r["seconds"] for r in res["go"]])
    o = median([r["seconds"] for r in res["ours"]])
    m = median([r["seconds"] for r in res["ours_metadata"]])
    o_rss = median([r["peak_rss_mib"] for r in res["ours"]])
    g_rss = median([r["peak_rss_mib"] for r in res["go"]])
    return [
        Row(name=names[0], ours=f"{secs(o)} ({CONCURRENCY} concurrent)", peer=f"{secs(g)} Go etcdbrctl copy",
            ratio=ratio(o, g), target=f"≤ {TARGET}×", met=o / g <= TARGET),
        Row(name=names[1], ours=f"{secs(m)} ({CONCURRENCY} concurrent)", peer=f"{secs(g)} Go etcdbrctl copy",
            ratio=ratio(m, g), target="(no target)"),
        Row(name=names[2], ours=mib(o_rss), peer=mib(g_rss), ratio=ratio(o_rss, g_rss), target="≤ 1×",
            met=o_rss <= g_rss),
    ]
