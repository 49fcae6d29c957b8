"""Peak RSS of our process for a full snapshot (compression off and gzip) of a 256 MiB and a 1 GiB
etcd db to S3, and for a copy of one 256 MiB / 1 GiB snapshot from one S3 server to another (two
services, so no server-side copy: the bytes stream through us, as to any other provider). RSS is ``ru_maxrss`` of the driver process, which
does nothing else; its baseline after imports is reported too."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

from bench import full_snapshot
from bench.common import GiB, MiB, Ctx, Row, log, median, mib, run_driver, s3, save_raw

NAME = "memory"
LIMIT_MIB = 150
FLAT = 0.10  # "flat": the larger size may cost at most this much more


def seed_one(s, bucket: str, size: int, prefix: str = "etcd/v2"):
    from etcdbr.snapshot import Kind, new_snapshot

    snap = new_snapshot(Kind.FULL, 0, 1000, prefix=prefix, compression_suffix="")
    c = s.client()
    mpu = c.create_multipart_upload(Bucket=bucket, Key=snap.key)
    part = 64 * MiB
    block = os.urandom(part)

    def put(n: int):
        body = block[: min(part, size - (n - 1) * part)]
        return {"PartNumber": n, "ETag": c.upload_part(Bucket=bucket, Key=snap.key, UploadId=mpu["UploadId"],
                                                       PartNumber=n, Body=body)["ETag"]}

    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(put, range(1, -(-size // part) + 1)))
    c.complete_multipart_upload(Bucket=bucket, Key=snap.key, UploadId=mpu["UploadId"],
                                MultipartUpload={"Parts": parts})


def baseline() -> float:
    return run_driver("baseline", [])["peak_rss_mib"]


def run(ctx: Ctx) -> list[Row]:
    sizes = [ctx.size(256 * MiB, 16 * MiB), ctx.size(GiB, 64 * MiB)]
    raw: dict = {"sizes": sizes, "full": {}, "copy": {}, "baseline_mib": baseline()}
    for size in sizes:
        got = ctx.shared.get(("full", size))
        if got is None:
            got = full_snapshot.measure(ctx, size, with_peer=False)
        raw["full"][size] = {c: [r["peak_rss_mib"] for r in runs] for c, runs in got["ours"].items()}
    with s3(ctx) as s, s3(ctx) as other:
        for size in sizes:
            src = s.bucket("mem-src")
            seed_one(s, src, size)
            runs = []
            for i in range(ctx.repeats):
                r = run_driver("copy", ["--src", json.dumps(s.store_spec(src)),
                                        "--dst", json.dumps(other.store_spec(other.bucket("mem-dst"))), "--expect", "1"],
                               s.env())
                runs.append(r)
                log(f"{NAME} copy {size // MiB} MiB run {i + 1}: {r['seconds']:.1f}s rss {r['peak_rss_mib']} MiB")
            raw["copy"][size] = [r["peak_rss_mib"] for r in runs]
            s.empty(src)
    save_raw(NAME, raw)
    rows = []
    small, big = sizes

    def label(n: int) -> str:
        return f"{n / GiB:g} GiB" if n >= GiB else f"{n // MiB} MiB"

    for what, figures in (("full snapshot, compression off", {n: raw["full"][n]["none"] for n in sizes}),
                          ("full snapshot, gzip", {n: raw["full"][n]["gzip"] for n in sizes}),
                          ("copy of one snapshot S3 → another S3 (streamed)", raw["copy"])):
        a, b = median(figures[small]), median(figures[big])
        rows.append(Row(
            name=f"memory: peak RSS, {what}",
            ours=f"{mib(a)} at {label(small)}, {mib(b)} at {label(big)}",
            ratio=f"{b / a:.2f}× ({label(big)} / {label(small)})",
            target=f"≤ {LIMIT_MIB} MiB, flat",
            met=max(a, b) <= LIMIT_MIB and b <= a * (1 + FLAT),
        ))
    return rows
