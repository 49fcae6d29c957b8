"""The direct delta replay (restore/direct.py) on small dbs written here and deltas in a Local
store, entry by entry: what etcd would store for each change, the refusals etcd would give, and a
failure leaving the db as it was. Real etcd against it: tests/integration/test_direct_replay.py.
"""

from __future__ import annotations

import io

import pytest

import snapshot_factory as sf
from etcdbr.config import StoreConfig
from etcdbr.delta import Event, EventType, KeyValue
from etcdbr.errors import RestoreError
from etcdbr.etcd import proto
from etcdbr.restore.bbolt import BoltReader
from etcdbr.restore.boltwrite import BoltWriter
from etcdbr.restore.direct import DirectReplay, DirectUnsupported, encode_kv, revision_key
from etcdbr.restore.progress import Progress
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store

META = [(b"consistent_index", (3).to_bytes(8, "big")), (b"term", (1).to_bytes(8, "big"))]


def make_db(path, entries, meta=META, extra=()) -> None:
    """A db with ``entries`` ((main, sub, tombstone, key, value, create, version)) in ``key``."""
    out = BoltWriter(path, 4096)
    out.bucket(b"key", [(revision_key(m, s, t), proto.KeyValue(key=k).SerializeToString() if t else
                         encode_kv(k, v, c, m, ver)) for m, s, t, k, v, c, ver in entries])
    out.bucket(b"meta", sorted(meta))
    out.bucket(b"members", [(b"1", b'{"id":1,"name":"m"}')])
    for name, items in extra:
        out.bucket(name, items)
    out.finish()


def put(key: bytes, rev: int, value: bytes = b"v", create: int = 0, version: int = 0, lease: int = 0) -> Event:
    return Event(EventType.PUT, KeyValue(key, value, create or rev, rev, version or 1, lease),
                 time="2024-01-02T14:04:06Z")


def delete(key: bytes, rev: int) -> Event:
    return Event(EventType.DELETE, KeyValue(key, mod_revision=rev), time="2024-01-02T14:04:06Z")


def store_with(tmp_path, events, start: int, parts: int = 2):
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    return store, sf.save_deltas(store, events, start, parts=parts, policies=("gzip", None))


def replay(tmp_path, db, store, deltas, compact_every: int = 10, to_revision: int | None = None) -> int:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return DirectReplay(store, db, max_fetchers=2, progress=Progress(interactive=False),
                        compact_every=compact_every, to_revision=to_revision).run(deltas, work)


def key_bucket(db) -> list[tuple[bytes, proto.KeyValue]]:
    with BoltReader.open(db) as r:
        return [(k, proto.KeyValue.FromString(v)) for k, v in r.items(b"key")]


BASE = [(2, 0, False, b"a", b"a1", 2, 1), (3, 0, False, b"b", b"b1", 3, 1), (4, 0, False, b"a", b"a2", 2, 2),
        (5, 0, True, b"b", b"", 0, 0), (5, 1, False, b"c", b"c1", 5, 1)]


def test_each_change_is_stored_as_etcd_stores_it(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    events = [put(b"a", 6, b"a3", create=99, version=99),  # the event's own create/version are not trusted
              put(b"b", 7, b"b2"),                          # created again after its delete
              delete(b"a", 8), delete(b"zz", 8), put(b"d", 8),  # a missing key: no change, no sub revision
              put(b"a", 9, b"a4", lease=77),                # leases are dropped
              put(b"c", 10, b"")]                           # an empty value
    store, deltas = store_with(tmp_path, events, 6)
    assert replay(tmp_path, db, store, deltas) == 10
    got = key_bucket(db)
    assert [k for k, _ in got[5:]] == [revision_key(6, 0), revision_key(7, 0), revision_key(8, 0, True),
                                      revision_key(8, 1), revision_key(9, 0), revision_key(10, 0)]
    as_tuples = [(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) for _, kv in got[5:]]
    assert as_tuples == [(b"a", b"a3", 2, 6, 3, 0), (b"b", b"b2", 7, 7, 1, 0), (b"a", b"", 0, 0, 0, 0),
                         (b"d", b"v", 8, 8, 1, 0), (b"a", b"a4", 9, 9, 1, 0), (b"c", b"", 5, 10, 2, 0)]
    assert got[7][1].SerializeToString() == proto.KeyValue(key=b"a").SerializeToString()  # a tombstone: the key only
    with BoltReader.open(db) as r:  # every other bucket as it was
        assert list(r.items(b"meta")) == sorted(META)
        assert list(r.items(b"members")) == [(b"1", b'{"id":1,"name":"m"}')]


def test_compaction_where_the_replay_through_etcd_compacts(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    events = [put(b"a", 6), delete(b"c", 7), put(b"e", 8), put(b"e", 9), put(b"f", 10), put(b"e", 11)]
    store, deltas = store_with(tmp_path, events, 6, parts=3)  # compaction after the 2nd delta, at 9
    assert [d.last_revision for d in deltas] == [7, 9, 11]
    assert replay(tmp_path, db, store, deltas, compact_every=2) == 11
    kept = [(k, kv.key) for k, kv in key_bucket(db)]
    # at 9: a's last change (6), e's (9); b and c deleted: gone with their tombstones
    assert kept == [(revision_key(6, 0), b"a"), (revision_key(9, 0), b"e"), (revision_key(10, 0), b"f"),
                    (revision_key(11, 0), b"e")]
    with BoltReader.open(db) as r:
        meta = dict(r.items(b"meta"))
    assert meta[b"finishedCompactRev"] == meta[b"scheduledCompactRev"] == revision_key(9, 0)
    assert not list((tmp_path / "work").iterdir()), "the held-back changes are removed"


BOUNDED = [put(b"a", 6), delete(b"c", 7), put(b"e", 8), put(b"e", 9), put(b"f", 10), put(b"e", 11)]


@pytest.mark.parametrize("bound", [5, 6, 8, 9, 11, 20])  # the db's own, inside deltas, at their ends, past the chain
def test_a_revision_bound_stops_the_replay_there(tmp_path, bound):
    whole = tmp_path / "whole"
    whole.mkdir()
    make_db(whole / "db", BASE)
    store, deltas = store_with(whole, BOUNDED, 6, parts=3)
    assert [d.last_revision for d in deltas] == [7, 9, 11]
    assert replay(whole, whole / "db", store, deltas) == 11
    bounded = tmp_path / "bounded"
    bounded.mkdir()
    make_db(bounded / "db", BASE)
    reached = replay(bounded, bounded / "db", store, deltas, to_revision=bound)
    assert reached == min(bound, 11)
    expected = [(k, kv) for k, kv in key_bucket(whole / "db") if int.from_bytes(k[:8], "big") <= bound]
    assert key_bucket(bounded / "db") == expected
    assert not list((bounded / "work").iterdir())


def test_a_revision_bound_compacts_where_the_shorter_chain_would(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    store, deltas = store_with(tmp_path, BOUNDED, 6, parts=3)
    # up to 9 the chain is the deltas to 7 and to 9: the replay through etcd compacts after the first only
    assert replay(tmp_path, db, store, deltas, compact_every=1, to_revision=9) == 9
    with BoltReader.open(db) as r:
        meta = dict(r.items(b"meta"))
    assert meta[b"finishedCompactRev"] == meta[b"scheduledCompactRev"] == revision_key(7, 0)
    assert [k for k, _ in key_bucket(db)][-1] == revision_key(9, 0)


def test_a_revision_bound_below_the_full_snapshot_is_refused(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    before = db.read_bytes()
    store, deltas = store_with(tmp_path, BOUNDED, 6, parts=3)
    with pytest.raises(RestoreError, match="cannot restore to revision 4: the full snapshot is already at revision 5"):
        replay(tmp_path, db, store, deltas, to_revision=4)
    assert db.read_bytes() == before


@pytest.mark.parametrize("events, message", [
    ([put(b"x", 6), put(b"x", 6)], "duplicate key given in txn request"),
    ([put(b"x", 6), delete(b"x", 6)], "duplicate key given in txn request"),
    ([delete(b"nothing", 6)], "changes nothing"),
    ([put(b"", 6)], "key is not provided"),
    ([put(b"x", 7)], "next event is at revision 7 but the restored data is at revision 5"),
])
def test_what_etcd_refuses_is_refused_and_the_db_stays_as_it_was(tmp_path, events, message):
    db = tmp_path / "db"
    make_db(db, BASE)
    before = db.read_bytes()
    store, deltas = store_with(tmp_path, events, 6, parts=1)
    with pytest.raises(RestoreError, match=message):
        replay(tmp_path, db, store, deltas)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket", "db", "work"]


def test_a_first_delta_overlapping_the_db_is_skipped_up_to_its_revision(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    events = [put(b"c", 5), put(b"a", 6)]  # revision 5 is in the db already
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    [delta] = sf.save_deltas(store, events, 4, parts=1)
    assert replay(tmp_path, db, store, [delta]) == 6
    assert [k for k, _ in key_bucket(db)][-1] == revision_key(6, 0)


def test_a_delta_named_past_its_events_is_a_mismatch(tmp_path):
    db = tmp_path / "db"
    make_db(db, BASE)
    store, [delta] = store_with(tmp_path, [put(b"x", 6)], 6, parts=1)
    named = new_snapshot(Kind.INCR, 6, 7, prefix=store.prefix, compression_suffix=delta.compression_suffix)
    raw = store.fetch(delta)
    store.save(named, io.BytesIO(raw.read()))
    raw.close()
    with pytest.raises(RestoreError, match="the restored data is at revision 6, the snapshot ends at revision 7"):
        replay(tmp_path, db, store, [named])


def test_a_db_that_is_not_etcds_is_unsupported_and_untouched(tmp_path):
    db = tmp_path / "db"
    out = BoltWriter(db, 4096)
    out.bucket(b"key", [(b"not a revision", b"x")])
    out.bucket(b"meta", META)
    out.finish()
    before = db.read_bytes()
    store, deltas = store_with(tmp_path, [put(b"x", 2)], 2, parts=1)
    with pytest.raises(DirectUnsupported, match="unexpected key"):
        replay(tmp_path, db, store, deltas)
    assert db.read_bytes() == before and not (tmp_path / "db.direct").exists()
    (tmp_path / "other").write_bytes(b"\0" * 8192)
    with pytest.raises(DirectUnsupported, match="cannot be read"):
        replay(tmp_path, tmp_path / "other", store, deltas)
