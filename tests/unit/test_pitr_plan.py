"""Which full snapshot and which deltas a point-in-time restore uses, and the ranges it names."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from etcdbr.restore.pitr import TargetOutOfRange, available_ranges, plan
from etcdbr.snapshot import Kind, Snapshot

T0 = datetime(2026, 12, 5, tzinfo=timezone.utc)


def full(rev: int) -> Snapshot:
    return Snapshot(Kind.FULL, 0, rev, T0)


def delta(start: int, last: int) -> Snapshot:
    return Snapshot(Kind.INCR, start, last, T0)


STORE = [full(100), delta(101, 150), delta(151, 200), full(200), delta(201, 260), delta(261, 300),
         full(400), delta(450, 500)]


def test_ranges_merge_each_full_with_its_contiguous_deltas():
    assert available_ranges(STORE) == [(100, 300), (400, 400)]
    assert available_ranges([]) == []


@pytest.mark.parametrize("target, base, deltas", [
    (100, 100, []),
    (120, 100, [(101, 150)]),
    (150, 100, [(101, 150)]),
    (151, 100, [(101, 150), (151, 200)]),
    (200, 200, []),
    (201, 200, [(201, 260)]),
    (300, 200, [(201, 260), (261, 300)]),
    (400, 400, []),
])
def test_the_newest_full_at_or_below_and_the_deltas_up_to_the_target(target, base, deltas):
    chain = plan(STORE, target, "Local/x")
    assert chain.full.last_revision == base
    assert [(d.start_revision, d.last_revision) for d in chain.deltas] == deltas
    assert chain.upto == target and chain.last_revision == target


@pytest.mark.parametrize("target", [1, 99, 301, 399, 401, 470, 10_000])
def test_targets_outside_the_chain_name_the_ranges(target):
    with pytest.raises(TargetOutOfRange, match=r"revision \d+ is not in the backups; the revisions this store can "
                                               r"restore to are 100-300, 400$"):
        plan(STORE, target, "Local/x")


def test_an_overlapping_delta_is_used_and_its_early_revisions_are_left_to_the_replay():
    chain = plan([full(100), delta(90, 130), delta(131, 140)], 135, "Local/x")
    assert [(d.start_revision, d.last_revision) for d in chain.deltas] == [(90, 130), (131, 140)]


# -- --to-time: the revision of a time, from the events' recorded times in a real Local store ------
def _store(tmp_path, gap: bool = False):
    import io
    from datetime import timedelta

    from etcdbr.compression import compress_bytes
    from etcdbr.config import StoreConfig
    from etcdbr.delta import Event, EventType, KeyValue, encode_delta, format_go_time
    from etcdbr.snapshot import new_snapshot
    from etcdbr.snapstore import open_store

    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="etcd"))
    base = datetime(2026, 12, 5, 10, 0, tzinfo=timezone.utc)

    def at(seconds: float):
        return base + timedelta(seconds=seconds)

    def save_delta(first: int, last: int, first_second: float, created: float) -> None:
        events = [Event(EventType.PUT, KeyValue(key=b"k", value=b"v", mod_revision=r, create_revision=1, version=r),
                        time=format_go_time(at(first_second + r - first))) for r in range(first, last + 1)]
        snap = new_snapshot(Kind.INCR, first, last, prefix=store.prefix, compression_suffix=".gz",
                            created_on=at(created))
        store.save(snap, io.BytesIO(compress_bytes(encode_delta(events), "gzip")))

    for rev, created in ((10, 0), (20, 31)):
        store.save(new_snapshot(Kind.FULL, 0, rev, prefix=store.prefix, created_on=at(created)), io.BytesIO(b"db"))
    if not gap:
        save_delta(11, 20, 10, 30)   # revision r recorded at 10:00:(r - 1)
    save_delta(21, 30, 60, 90)       # revision r recorded at 10:01:(r - 21)
    return store, at


@pytest.mark.parametrize("seconds, revision", [(15.5, 16), (10, 11), (9.99, 10), (45, 20), (60, 21), (68.5, 29)])
def test_a_time_becomes_the_last_revision_recorded_at_or_before_it(tmp_path, seconds, revision):
    from etcdbr.restore.pitr import resolve_time

    store, at = _store(tmp_path)
    assert resolve_time(store, store.list(), at(seconds)) == revision


@pytest.mark.parametrize("seconds, message", [
    (-3600, "is before the oldest revision the backups hold"),
    (3600, "is after the last event the backups hold (revision 30)"),
])
def test_a_time_outside_the_chain_is_refused(tmp_path, seconds, message):
    from etcdbr.restore.pitr import resolve_time

    store, at = _store(tmp_path)
    with pytest.raises(TargetOutOfRange, match=re.escape(message)):
        resolve_time(store, store.list(), at(seconds))


def test_a_time_in_revisions_no_delta_holds_is_refused(tmp_path):
    from etcdbr.restore.pitr import resolve_time

    store, at = _store(tmp_path, gap=True)
    with pytest.raises(TargetOutOfRange, match="falls after revision 10 and before revision 20 at the latest, and no "
                                               "delta holds the revisions between them"):
        resolve_time(store, store.list(), at(15))
    assert resolve_time(store, store.list(), at(45)) == 20  # after the second full, before its first event
