"""``verify``: every defect it promises to find is planted for real and must be found, by name;
a sound store must pass; an unreachable one must never pass as empty."""

from __future__ import annotations

import io
import json
import os
import threading
import tracemalloc
import zlib
from pathlib import Path

import pytest

from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind
from etcdbr.snapstore import open_store
from etcdbr.verify import verify_store
from reliability.helpers import delta_payload, full_payload, gz, invoke, run_cli, save_chain, snap


@pytest.fixture
def local(tmp_path):
    root = tmp_path / "bucket"
    store = open_store(StoreConfig(provider="Local", container=str(root), prefix="etcd"))
    store.root_path = root
    return store


def _args(store) -> list[str]:
    return ["verify", "--storage-provider=Local", f"--store-container={store.root_path}", "--store-prefix=etcd"]


def _path(store, s) -> Path:
    return store.root_path / s.key


def _kinds(report) -> list[tuple[str, str]]:
    return [(d.kind, d.key.rsplit("/", 1)[-1]) for d in report.defects]


def test_sound_store_passes_with_exit_0(local, outcome):
    chain = save_chain(local)
    save_chain(local, full_last=130, deltas=((131, 140),), minutes=10)
    result = invoke(_args(local))
    assert result.code == 0, result.output
    assert "no defects" in result.stdout
    assert chain[0].snap_name in result.stdout
    assert "contiguous" in result.stdout and "BROKEN" not in result.stdout
    report = verify_store(local)
    assert report.ok and len(report.objects) == 5 and len(report.chains) == 2
    assert all(o.sha256 for o in report.objects)
    outcome.record("verify", "sound store (2 chains, 5 objects)", "verify", f"exit {result.code}: no defects")


def test_json_output(local):
    save_chain(local)
    result = invoke(_args(local) + ["--output=json"])
    assert result.code == 0
    data = json.loads(result.stdout)
    assert data["ok"] is True and len(data["objects"]) == 3 and data["defects"] == []
    assert data["chains"][0]["contiguous"] is True


@pytest.mark.parametrize("how", ["flip-raw", "flip-gz", "truncate-gz", "wrong-suffix", "unknown-suffix", "not-etcd"])
def test_corrupt_full_snapshot_is_named(local, outcome, how):
    raw_full = full_payload()
    if how == "flip-raw":
        s = snap(local, Kind.FULL, 0, 100, suffix="")
        data = bytearray(raw_full)
        data[700] ^= 0x01
        expect = "hash-mismatch"
    elif how == "flip-gz":
        s = snap(local, Kind.FULL, 0, 100)
        data = bytearray(gz(raw_full))
        data[len(data) // 2] ^= 0xFF
        expect = ("undecodable", "hash-mismatch")
    elif how == "truncate-gz":
        s = snap(local, Kind.FULL, 0, 100)
        data = gz(raw_full)[:-20]
        expect = "truncated"
    elif how == "wrong-suffix":
        s = snap(local, Kind.FULL, 0, 100, suffix=".zlib")  # gzip bytes under a zlib name
        data = gz(raw_full)
        expect = "undecodable"
    elif how == "unknown-suffix":
        s = snap(local, Kind.FULL, 0, 100, suffix=".bz2")
        data = raw_full
        expect = "unknown-suffix"
    else:
        s = snap(local, Kind.FULL, 0, 100, suffix="")
        data = b"#!/bin/sh\necho this is not an etcd snapshot\n" * 40
        expect = "truncated"
    local.save(s, io.BytesIO(bytes(data)))
    d = snap(local, Kind.INCR, 101, 110, minutes=1)
    local.save(d, io.BytesIO(gz(delta_payload(101, 110))))
    result = invoke(_args(local))
    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    report = verify_store(local)
    assert [x.key for x in report.defects] == [s.key], report.defects
    kinds = expect if isinstance(expect, tuple) else (expect,)
    assert report.defects[0].kind in kinds
    assert f"{report.defects[0].kind}: {s.key}" in result.stdout
    outcome.record("verify", f"full snapshot: {how}", "verify", f"exit 1, {report.defects[0].kind}: <key> named")


@pytest.mark.parametrize("how", ["flip-hash", "wrong-range", "empty", "not-json"])
def test_corrupt_delta_is_named(local, outcome, how):
    full = snap(local, Kind.FULL, 0, 100)
    local.save(full, io.BytesIO(gz(full_payload())))
    payload = delta_payload(101, 110)
    last = 110
    if how == "flip-hash":
        b = bytearray(payload)
        b[-1] ^= 1
        payload, expect = bytes(b), "hash-mismatch"
    elif how == "wrong-range":
        last, expect = 115, "revision-mismatch"  # the name claims revisions the events do not hold
    elif how == "empty":
        body = b"[]"
        payload, expect = body + __import__("hashlib").sha256(body).digest(), "revision-mismatch"
    else:
        body = b"{not json"
        payload, expect = body + __import__("hashlib").sha256(body).digest(), "undecodable"
    d = snap(local, Kind.INCR, 101, last, minutes=1)
    local.save(d, io.BytesIO(gz(payload)))
    report = verify_store(local)
    assert [(x.kind, x.key) for x in report.defects] == [(expect, d.key)]
    result = invoke(_args(local))
    assert result.code == 1 and d.key in result.stdout
    outcome.record("verify", f"delta snapshot: {how}", "verify", f"exit 1, {expect}: <key> named")


def test_chain_defects(local, outcome):
    orphan = snap(local, Kind.INCR, 1, 5, minutes=0)
    local.save(orphan, io.BytesIO(gz(delta_payload(1, 5))))
    chain = save_chain(local, full_last=100, deltas=((101, 110), (115, 120), (118, 130)), minutes=1)
    report = verify_store(local)
    got = [(d.kind, d.key) for d in report.defects]
    assert ("no-base", orphan.key) in got
    assert ("gap", chain[2].key) in got  # 111..114 missing
    assert ("overlap", chain[3].key) in got  # 118 < 121
    assert len(got) == 3
    assert report.chains[0].contiguous is False
    result = invoke(_args(local))
    assert result.code == 1 and "BROKEN" in result.stdout and "111..114" in result.stdout
    for kind in ("no-base", "gap", "overlap"):
        outcome.record("verify", f"chain: {kind}", "verify", f"exit 1, {kind} named with the revisions")


def test_names_and_leftovers(local, outcome):
    save_chain(local)
    stray = local.root_path / "etcd" / "v2" / "Full-xx-yy-zz"
    stray.write_bytes(b"?")
    other = local.root_path / "unrelated" / "file.txt"
    other.parent.mkdir(parents=True)
    other.write_text("not ours")
    chunk = local.root_path / "etcd" / "v2" / "Full-00000000-00000200-1714564800.gz" / "0000000001"
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(b"part")
    report = verify_store(local)
    got = sorted(d.kind for d in report.defects)
    assert got == ["leftover-chunk", "unparseable-name"], report.defects
    assert not any("unrelated" in d.key for d in report.defects)
    result = invoke(_args(local) + ["--names-only"])
    assert result.code == 1 and "Full-xx-yy-zz" in result.stdout and "(names only)" in result.stdout
    outcome.record("verify", "unparseable object name in the bucket", "verify", "exit 1, unparseable-name: <key>")
    outcome.record("verify", "leftover chunk of a multipart upload", "verify", "exit 1, leftover-chunk: <key>")


def test_names_only_does_not_read(local):
    full = snap(local, Kind.FULL, 0, 100, suffix="")
    local.save(full, io.BytesIO(b"garbage"))
    assert verify_store(local, check_content=False).ok
    assert not verify_store(local).ok


def test_reads_are_parallel_but_bounded(local):
    for i in range(12):
        save_chain(local, full_last=100 * (i + 1), deltas=(), minutes=i)
    active, peak, lock = [0], [0], threading.Lock()
    gate = threading.Barrier(3, timeout=5)
    original = local.fetch

    def fetch(s):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            gate.wait()  # proves 3 run at once
        except threading.BrokenBarrierError:
            pass
        stream = original(s)
        with lock:
            active[0] -= 1
        return stream

    local.fetch = fetch
    report = verify_store(local, parallel=3)
    assert report.ok
    assert peak[0] == 3


def test_memory_stays_bounded_on_a_large_snapshot(local):
    size_pages = 64 * 1024  # 32 MiB
    block = os.urandom(512)
    path_snap = snap(local, Kind.FULL, 0, 100, suffix="")

    class Gen(io.RawIOBase):
        def __init__(self):
            self.left = size_pages
            self.h = __import__("hashlib").sha256()
            self.done = False

        def readable(self):
            return True

        def read(self, n=-1):
            if self.left:
                k = min(self.left, 2048)
                self.left -= k
                data = block * k
                self.h.update(data)
                return data
            if not self.done:
                self.done = True
                return self.h.digest()
            return b""

    local.save(path_snap, Gen())
    tracemalloc.start()
    try:
        report = verify_store(local)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok, report.defects
    assert peak < 8 * 1024 * 1024, peak


def test_unreachable_store_is_an_error_not_an_empty_store(tmp_path, outcome):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(["verify", "--storage-provider=Local", f"--store-container={blocker}", "--store-prefix=p"])
    assert result.code == 1
    assert "no defects" not in result.stdout
    assert len(result.error_lines()) == 1 and "Traceback" not in result.output
    outcome.record("verify", "store unreachable", "verify", result.error_lines()[0])


@pytest.mark.integration
def test_verify_s3_end_to_end(s3env, outcome):
    store = s3env.store()
    chain = save_chain(store)
    args = ["verify", *s3env.cli_args()]
    ok = run_cli(args, env=s3env.env())
    assert ok.code == 0, ok.output
    assert "no defects" in ok.stdout
    # Flip one byte of the middle delta, as bit rot or a bad copy would.
    key = chain[1].key
    data = bytearray(zlib.decompress(s3env.get_raw(key), 31))
    data[10] ^= 0x20
    s3env.put_raw(key, gz(bytes(data)))
    bad = run_cli(args + ["--output=json"], env=s3env.env())
    assert bad.code == 1, bad.output
    report = json.loads(bad.stdout)
    assert [(d["kind"], d["key"]) for d in report["defects"]] == [("hash-mismatch", key)]
    assert "Traceback" not in bad.output
    outcome.record("verify", "S3 object with one flipped byte", "verify (console script, real S3)",
                   "exit 1, hash-mismatch naming the object")


@pytest.mark.integration
def test_verify_gcs_end_to_end(gcsenv):
    store = gcsenv.store()
    chain = save_chain(store)
    gcsenv.put_raw(chain[2].key, gz(delta_payload(111, 120))[:-9])
    result = invoke(["verify", *gcsenv.cli_args()])
    assert result.code == 1, result.output
    assert f"truncated: {chain[2].key}" in result.stdout
