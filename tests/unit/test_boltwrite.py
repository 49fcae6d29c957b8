"""The bbolt file writer of the direct delta replay (restore/boltwrite.py) and the etcd encodings
of restore/direct.py: what is written reads back through restore/bbolt.py, every page of the file
is reachable exactly once (bbolt's ``tx.Check`` rule: nothing unreachable and unfreed, nothing
referenced twice), keys stay sorted across pages, and a change's key and value are etcd's bytes.
Real etcd opening, hashing and compacting such files: tests/integration/test_direct_replay.py.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdbr.etcd import proto
from etcdbr.restore.bbolt import BRANCH, BUCKET_LEAF, LEAF, PAGE_HEADER, BoltReader
from etcdbr.restore.boltwrite import FREELIST, BoltWriter
from etcdbr.restore.direct import DirectUnsupported, KeyIndex, encode_kv, parse_revision_key, revision_key


def page_usage(path) -> dict[int, str]:
    """Walk the file from its meta page as bbolt's consistency check does: page id -> what it is."""
    data = open(path, "rb").read()
    with BoltReader.open(path) as db:
        ps, meta = db.meta.page_size, db.meta
    seen: dict[int, str] = {0: "meta", 1: "meta"}

    def mark(pgid: int, what: str) -> bytes:
        pid, flags, count, overflow = struct.unpack_from("<QHHI", data, pgid * ps)
        assert pid == pgid, f"page {pgid} says it is {pid}"
        for p in range(pgid, pgid + overflow + 1):
            assert p not in seen, f"page {p} referenced twice ({seen[p]}, {what})"
            seen[p] = what
        return data[pgid * ps:(pgid + overflow + 1) * ps]

    def tree(pgid: int, what: str, low: bytes | None = None) -> list[bytes]:
        page = mark(pgid, what)
        _pid, flags, count, _overflow = struct.unpack_from("<QHHI", page)
        keys = []
        for i in range(count):
            at = PAGE_HEADER + 16 * i
            if flags & BRANCH:
                pos, ksize, child = struct.unpack_from("<IIQ", page, at)
                first = page[at + pos:at + pos + ksize]
                below = tree(child, what, first)
                assert below and below[0] == first, "a branch key is its child's first key"
                keys += below
            else:
                assert flags & LEAF
                eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, at)
                key = page[at + pos:at + pos + ksize]
                keys.append(key)
                if eflags & BUCKET_LEAF:
                    root = struct.unpack_from("<Q", page, at + pos + ksize)[0]
                    tree(root, key.decode("utf-8", "replace"))
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        return keys

    free = mark(meta.freelist, "freelist")
    assert struct.unpack_from("<QHHI", free)[1] == FREELIST
    tree(meta.root, "root")
    assert sorted(seen) == list(range(meta.high_water)), "every page reachable exactly once"
    assert len(data) == meta.high_water * ps
    return seen


def test_buckets_read_back_and_every_page_is_reachable_once(tmp_path):
    path = tmp_path / "db"
    out = BoltWriter(path, 4096)
    out.bucket(b"meta", [(b"consistent_index", b"\0" * 8), (b"term", b"\0" * 7 + b"\1")])
    keys = out.open_bucket(b"key", sequence=7)
    for i in range(5000):
        keys.add(revision_key(i + 2, 0), b"x" * (i % 300))
    keys.add(revision_key(6000, 0), b"big" * 100_000)  # overflow pages
    keys.add(revision_key(6001, 0), b"after")
    keys.finish()
    out.bucket(b"alarm", [])
    out.finish()
    with BoltReader.open(path) as db:
        assert db.bucket_names() == [b"alarm", b"key", b"meta"]
        assert db.bucket_sequence(b"key") == 7
        got = list(db.items(b"key"))
        assert len(got) == 5002 and got[-2][1] == b"big" * 100_000 and got[-1] == (revision_key(6001, 0), b"after")
        assert dict(db.items(b"meta"))[b"term"] == b"\0" * 7 + b"\1"
        assert list(db.items(b"alarm")) == []
        # both meta pages are valid; bbolt takes the newer, page 1
        assert db.meta.txid % 2 == 1
    usage = page_usage(path)
    assert usage[2] == "freelist"


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.binary(min_size=1, max_size=12),
                       st.dictionaries(st.binary(min_size=1, max_size=300), st.binary(max_size=9000), max_size=300),
                       min_size=1, max_size=6),
       st.sampled_from([1024, 4096, 16384]))
def test_any_content_round_trips(tmp_path_factory, buckets, page_size):
    path = tmp_path_factory.mktemp("bolt") / "db"
    out = BoltWriter(path, page_size)
    for name in sorted(buckets, reverse=True):  # any order: the root bucket is sorted at the end
        out.bucket(name, sorted(buckets[name].items()))
    out.finish()
    with BoltReader.open(path) as db:
        assert db.bucket_names() == sorted(buckets)
        for name, items in buckets.items():
            assert list(db.items(name)) == sorted(items.items())
    page_usage(path)


def test_leaves_copied_from_another_file_read_back(tmp_path):
    # the direct replay copies the restored db's key bucket leaf by leaf (overflow pages included),
    # then appends element by element
    src = tmp_path / "src"
    out = BoltWriter(src, 4096)
    keys = out.open_bucket(b"key")
    for i in range(3000):
        keys.add(revision_key(i + 2, 0), b"v" * (i % 500))
    keys.add(revision_key(5000, 0), b"big" * 50_000)
    keys.finish()
    out.finish()
    dst = tmp_path / "dst"
    out = BoltWriter(dst, 4096)
    with BoltReader.open(src) as db:
        copied = out.open_bucket(b"key")
        copied.add(revision_key(1, 0), b"first")  # pending elements are written before a copied leaf
        for page, items in db.leaves(b"key"):
            copied.add_leaf(page, items)
        with pytest.raises(ValueError):  # a copied leaf must come after every key so far
            copied.add_leaf(*next(db.leaves(b"key")))
        copied.add(revision_key(5001, 0), b"after")
        copied.finish()
        expected = [(revision_key(1, 0), b"first"), *db.items(b"key"), (revision_key(5001, 0), b"after")]
        assert copied.count == len(expected)
    out.finish()
    with BoltReader.open(dst) as db:
        assert list(db.items(b"key")) == expected
    page_usage(dst)


def test_keys_out_of_order_are_refused(tmp_path):
    out = BoltWriter(tmp_path / "db", 4096)
    tree = out.open_bucket(b"key")
    tree.add(b"b", b"")
    with pytest.raises(ValueError):
        tree.add(b"a", b"")
    with pytest.raises(ValueError):
        tree.add(b"b", b"")
    out.close()


def test_revision_keys_are_etcds():
    assert revision_key(0x0102, 3) == bytes.fromhex("0000000000000102") + b"_" + bytes.fromhex("0000000000000003")
    assert revision_key(5, 0, tombstone=True)[-1:] == b"t"
    assert parse_revision_key(revision_key(123456789, 42, True)) == (123456789, 42, True)
    for bad in (b"short", revision_key(1, 1) + b"x", revision_key(1, 1)[:8] + b"-" + revision_key(1, 1)[9:]):
        with pytest.raises(DirectUnsupported):
            parse_revision_key(bad)


def test_keyvalue_bytes_are_etcds():
    # mvccpb.KeyValue as gogoproto marshals it: fields in order, zero values left out
    raw = encode_kv(b"k", b"v", 5, 7, 2)
    assert raw == b"\x0a\x01k\x10\x05\x18\x07\x20\x02\x2a\x01v"
    assert encode_kv(b"k", b"", 7, 7, 1) == b"\x0a\x01k\x10\x07\x18\x07\x20\x01"
    assert proto.KeyValue.FromString(raw) == proto.KeyValue(key=b"k", value=b"v", create_revision=5, mod_revision=7,
                                                            version=2)


def _entry(main: int, sub: int, tombstone: bool, kv: proto.KeyValue) -> tuple[bytes, bytes, int]:
    return revision_key(main, sub, tombstone), kv.SerializeToString(), 0


def test_key_index_follows_etcds_restore_rules():
    index = KeyIndex()
    kv = proto.KeyValue
    assert index.load_leaf([_entry(10, 0, False, kv(key=b"a", create_revision=4, version=3))]) == 10
    assert index.keys[b"a"] == (4, 3, 10, 0)  # first seen: as written
    index.load_leaf([_entry(11, 1, False, kv(key=b"a", create_revision=99, version=99))])  # later puts count versions
    assert index.keys[b"a"] == (4, 4, 11, 1)
    index.load_leaf([_entry(12, 0, True, kv(key=b"a"))])
    assert index.keys[b"a"][0] == 0 and not index.kept(b"a", 12, 0)
    last = index.load_leaf([_entry(13, 0, False, kv(key=b"a", create_revision=1, version=7)),  # created again
                            _entry(14, 0, True, kv(key=b"b"))])  # a tombstone of a key never seen: deleted
    assert last == 14
    assert index.keys[b"a"] == (13, 1, 13, 0)
    assert index.kept(b"a", 13, 0) and not index.kept(b"a", 11, 1) and not index.kept(b"zz", 13, 0)
    assert index.keys[b"b"][0] == 0
    assert index.load_leaf([]) == 0


def test_key_index_refuses_what_is_not_etcds():
    good = _entry(1, 0, False, proto.KeyValue(key=b"k", create_revision=1, mod_revision=1, version=1))
    for bad in ([(good[0], good[1], BUCKET_LEAF)],  # a nested bucket
                [(b"short", good[1], 0)],
                [(good[0][:8] + b"-" + good[0][9:], good[1], 0)],
                [(good[0] + b"x", good[1], 0)],
                [(good[0], b"\xff\xff\xff", 0)]):  # not a KeyValue
        with pytest.raises(DirectUnsupported):
            KeyIndex().load_leaf([good, *bad])
