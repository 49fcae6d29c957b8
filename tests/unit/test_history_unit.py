"""snapshot history's building blocks: safe printing, the revisions no delta covers, the search
over a real Local store (duplicates, windows, a delta whose events lie outside its name)."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pytest

from etcdbr.compression import compress_bytes
from etcdbr.config import StoreConfig
from etcdbr.delta import Event, EventType, KeyValue, encode_delta
from etcdbr.history import HistoryError, HistoryResult, Window, coverage_gaps, safe_text, search
from etcdbr.snapshot import Kind, Snapshot, new_snapshot
from etcdbr.snapstore import open_store

T0 = datetime(2026, 12, 5, tzinfo=timezone.utc)


def test_safe_text_escapes_what_could_move_a_terminal():
    assert safe_text("/registry/ns/prod".encode()) == "/registry/ns/prod"
    assert safe_text("naïve".encode()) == "naïve"
    assert safe_text(b"a\x1b[2Jb\n\x00\xff") == "a\\x1b[2Jb\\n\\x00\\xff"


def test_coverage_gaps():
    snaps = [Snapshot(Kind.FULL, 0, 10, T0), Snapshot(Kind.INCR, 11, 20, T0), Snapshot(Kind.INCR, 31, 40, T0)]
    assert coverage_gaps(snaps, 1, None) == [(1, 10), (21, 30)]
    assert coverage_gaps(snaps, 15, 35) == [(21, 30)]
    assert coverage_gaps(snaps, 11, 50) == [(21, 30), (41, 50)]


def put(rev: int, key: bytes = b"k", value: bytes = b"v") -> Event:
    return Event(EventType.PUT, KeyValue(key=key, value=value, mod_revision=rev), time=f"2026-12-05T10:00:{rev:02d}Z")


@pytest.fixture
def store(tmp_path):
    s = open_store(StoreConfig(provider="Local", container=str(tmp_path / "b"), prefix="etcd"))

    def save(first: int, last: int, events: list[Event]) -> None:
        snap = new_snapshot(Kind.INCR, first, last, prefix=s.prefix, compression_suffix=".gz")
        s.save(snap, io.BytesIO(compress_bytes(encode_delta(events), "gzip")))

    save(1, 5, [put(r, b"k" if r % 2 else b"other") for r in range(1, 6)])
    save(4, 8, [put(r) for r in range(4, 9)])  # overlaps 4-5: those are reported once
    s.save_delta = save  # type: ignore[attr-defined]  # for the test that adds a bad one
    return s


def test_each_revision_once_in_order_within_the_windows(store):
    result = HistoryResult()
    got = [m.revision for m in search(store, Window(key=b"k"), result=result)]
    assert got == [1, 3, 5, 6, 7, 8] and result.deltas_read == 2 and result.events_read == 10
    assert [m.revision for m in search(store, Window(key=b"k", from_revision=3, to_revision=6))] == [3, 5, 6]
    when = datetime(2026, 12, 5, 10, 0, 6, tzinfo=timezone.utc)
    assert [m.revision for m in search(store, Window(key=b"", prefix=True, to_time=when))] == [1, 2, 3, 4, 5, 6]


def test_a_delta_whose_events_lie_outside_its_name_fails(store):
    store.save_delta(9, 12, [put(9), put(13)])
    with pytest.raises(HistoryError, match="outside the revisions the name says"):
        list(search(store, Window(key=b"k")))
