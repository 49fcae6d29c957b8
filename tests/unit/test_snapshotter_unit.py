"""Snapshotter logic without etcd: startup rules, the snapshot stream checks, delta cutting.

Watch responses are real etcd protobuf messages fed to the snapshotter the way its watch task
feeds them; snapshots go to a Local store and are decoded back.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from datetime import datetime, timedelta, timezone

import pytest

from etcdbr.compression import decompress_bytes
from etcdbr.config import Config, StoreConfig
from etcdbr.delta import decode_delta
from etcdbr.errors import EtcdError, IntegrityError, StoreUnavailable
from etcdbr.etcd import proto as rpc
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapshotter import (
    Snapshotter,
    backoff_delay,
    full_snapshot_required_at_startup,
    full_snapshot_time_window,
    fullsnapshot,
)
from etcdbr.snapstore.local import LocalStore

UTC = timezone.utc


# -- startup rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("schedule, hours", [
    ("0 */1 * * *", 1),
    ("0 */4 * * *", 4),
    ("30 2 * * *", 24),
    ("0 * * * *", 24),
    ("0 3 * * 4", 24 * 7),
    ("0 */4 1 * *", 24),  # a day-of-month restriction is not an hourly schedule
])
def test_time_window(schedule, hours):
    assert full_snapshot_time_window(schedule) == hours


def _full(created: datetime, final: bool = False):
    return new_snapshot(Kind.FULL, 0, 10, prefix="v2", is_final=final, created_on=created)


def _local(*args) -> datetime:
    """A local wall-clock time (cron is evaluated in local time, as by the Go tool)."""
    return datetime(*args).astimezone()


NOW = _local(2024, 5, 15, 12, 30)


@pytest.mark.parametrize("case, prev, schedule, failed, expected", [
    ("no previous full", None, "0 14 * * *", False, True),
    ("previous is final", _full(NOW - timedelta(hours=1), final=True), "0 14 * * *", False, True),
    ("previous failed", _full(NOW - timedelta(hours=1)), "0 14 * * *", True, True),
    ("older than the window", _full(NOW - timedelta(days=2)), "0 14 * * *", False, True),
    # taken yesterday 14:00 exactly at schedule; the next run (today 14:00) is still ahead
    ("taken at schedule, none missed", _full(_local(2024, 5, 14, 14, 0)), "0 14 * * *", False, False),
    ("recent, next run ahead", _full(NOW - timedelta(hours=4, minutes=10)), "30 16 * * *", False, False),
    # taken 18h ago (yesterday 18:30); yesterday's 20:30 run was missed; the next (today 20:30) would
    # make the latest full 26h old: take one now
    ("missed, next beyond window", _full(NOW - timedelta(hours=18)), "30 20 * * *", False, True),
    # hourly schedule with */1: window of 1h; a full 20 min old with the next run 30 min away is fine
    ("hourly, recent", _full(NOW - timedelta(minutes=20)), "0 */1 * * *", False, False),
    ("hourly, missed", _full(NOW - timedelta(minutes=50)), "0 */1 * * *", False, True),
])
def test_full_snapshot_required_at_startup(case, prev, schedule, failed, expected):
    assert full_snapshot_required_at_startup(prev, schedule, NOW, failed) is expected, case


def test_backoff_delay():
    assert [backoff_delay(i, 2, 128) for i in range(9)] == [1, 2, 4, 8, 16, 32, 64, 128, 128]


# -- the snapshot stream checks ---------------------------------------------------------------
def etcd_stream(db_size: int = 4096 * 3) -> bytes:
    db = bytes(range(256)) * (db_size // 256)
    return db + hashlib.sha256(db).digest()


def drain(reader, n: int = 1000) -> bytes:
    out = []
    while chunk := reader.read(n):
        out.append(chunk)
    return b"".join(out)


def test_trailer_verifier_passes_a_good_stream_through():
    data = etcd_stream()
    verifier = fullsnapshot.TrailerVerifier(io.BytesIO(data))
    assert drain(verifier, 777) == data
    assert verifier.size == len(data)


def test_trailer_verifier_withholds_the_end_of_a_corrupt_stream():
    data = bytearray(etcd_stream())
    data[100] ^= 1
    verifier = fullsnapshot.TrailerVerifier(io.BytesIO(bytes(data)))
    seen = []
    with pytest.raises(IntegrityError, match="mismatch"):
        while chunk := verifier.read(1000):
            seen.append(chunk)
    # the consumer never got the last 32 bytes, so it never saw a complete stream
    assert len(b"".join(seen)) == len(data) - 32


def test_trailer_verifier_requires_a_trailer():
    db = bytes(4096 * 2)
    with pytest.raises(IntegrityError, match="SHA256 hash seems to be missing"):
        drain(fullsnapshot.TrailerVerifier(io.BytesIO(db)))
    with pytest.raises(IntegrityError, match="SHA256 hash seems to be missing"):
        drain(fullsnapshot.TrailerVerifier(io.BytesIO(b"tiny")))


async def _chunks(data: bytes, size: int, produced: list | None = None, fail_at: int | None = None):
    for i in range(0, len(data), size):
        if fail_at is not None and i >= fail_at:
            raise EtcdError("stream broke")
        if produced is not None:
            produced.append(i)
        yield data[i:i + size]
        await asyncio.sleep(0)


def _store(tmp_path) -> LocalStore:
    store = LocalStore(StoreConfig(provider="Local", container=str(tmp_path / "store"), prefix="p"))
    store.check()
    return store


def _listed_files(store: LocalStore) -> list[str]:
    return sorted(p.relative_to(store.root).as_posix() for p in store.root.rglob("*") if p.is_file())


def test_upload_stream_stores_verified_bytes(tmp_path):
    store = _store(tmp_path)
    data = etcd_stream(4096 * 64)
    snap = new_snapshot(Kind.FULL, 0, 5, prefix=store.prefix)

    async def go():
        chunks = _chunks(data[1000:], 1000)
        fenced = fullsnapshot.FencedStream(chunks, data[:1000], 5, True, 1)
        return await fullsnapshot.upload_stream(fenced, lambda s: store.save(snap, s), lambda raw: raw)

    read, stored = asyncio.run(go())
    assert read == stored == len(data)
    with store.fetch(snap) as fh:
        assert fh.read() == data


@pytest.mark.parametrize("failure", ["hash", "stream"])
def test_upload_stream_stores_nothing_on_failure(tmp_path, failure):
    store = _store(tmp_path)
    data = bytearray(etcd_stream(4096 * 64))
    if failure == "hash":
        data[-1] ^= 0xFF
    snap = new_snapshot(Kind.FULL, 0, 5, prefix=store.prefix)

    async def go():
        chunks = _chunks(bytes(data), 4096, fail_at=len(data) // 2 if failure == "stream" else None)
        first = await chunks.__anext__()
        fenced = fullsnapshot.FencedStream(chunks, first, 5, True, 1)
        await fullsnapshot.upload_stream(fenced, lambda s: store.save(snap, s), lambda raw: raw)

    with pytest.raises(IntegrityError if failure == "hash" else EtcdError):
        asyncio.run(go())
    assert _listed_files(store) == []
    assert store.list() == []


def test_stream_bridge_runs_a_bounded_distance_ahead():
    data = etcd_stream(4096 * 256)
    ahead, block = 4096, 1024

    async def go():
        produced: list[int] = []
        bridge = fullsnapshot.StreamBridge(asyncio.get_running_loop(), ahead=ahead, block=block)
        pump = asyncio.create_task(bridge.pump(_chunks(data, 256, produced)))
        consumed = 0
        most_ahead = 0

        def reader():
            nonlocal consumed, most_ahead
            while chunk := bridge.read(1000):
                consumed += len(chunk)
                most_ahead = max(most_ahead, len(produced) * 256 - consumed)
                threading.Event().wait(0.0005)

        await asyncio.to_thread(reader)
        await pump
        return consumed, most_ahead

    consumed, most_ahead = asyncio.run(go())
    assert consumed == len(data)
    # what waits in the queue, the block being gathered, and what the reader holds of the last one
    assert most_ahead <= ahead + 2 * block


@pytest.mark.parametrize("size", [1, 31, 32, 1000, 4096, 70_000, -1])
def test_stream_bridge_reads_whole_requests_across_chunks(size):
    data = etcd_stream(4096 * 8)

    async def go():
        bridge = fullsnapshot.StreamBridge(asyncio.get_running_loop(), ahead=4096, block=1024)
        pump = asyncio.create_task(bridge.pump(_chunks(data[100:], 333), first=data[:100]))
        pieces = await asyncio.to_thread(lambda: list(iter(lambda: bridge.read(size), b"")))
        await pump
        return pieces

    pieces = asyncio.run(go())
    assert b"".join(pieces) == data
    if size > 0:
        assert all(len(p) == size for p in pieces[:-1])  # short only at the end
        assert all(isinstance(p, bytes) for p in pieces)


# -- delta cutting ----------------------------------------------------------------------------
def response(*events: tuple[int, bytes, int]) -> rpc.WatchResponse:
    """A watch response of (type, key, mod_revision) events."""
    return rpc.WatchResponse(events=[
        rpc.Event(type=t, kv=rpc.KeyValue(key=k, value=b"v-" + k if t == 0 else b"", mod_revision=r,
                                           create_revision=r, version=1))
        for t, k, r in events
    ])


class GatedStore(LocalStore):
    """A Local store whose save can be held open or made to fail, to test what happens meanwhile."""

    def __init__(self, config):
        super().__init__(config)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = 0

    def save(self, snapshot, stream):
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next -= 1
            stream.read()
            raise StoreUnavailable("injected", endpoint=self.display)
        return super().save(snapshot, stream)


def _snapshotter(tmp_path, memory_limit=10 * 1024 * 1024, compression="gzip", last_full=100):
    store = GatedStore(StoreConfig(provider="Local", container=str(tmp_path / "store"), prefix="p"))
    store.check()
    full = new_snapshot(Kind.FULL, 0, last_full, prefix=store.prefix,
                        created_on=datetime.now(UTC) - timedelta(minutes=5))
    store.save(full, io.BytesIO(etcd_stream()))
    config = Config()
    config.store = store.config
    config.snapshotter.delta_snapshot_memory_limit = memory_limit
    config.snapshotter.compression_policy = compression
    snapper = Snapshotter(store, config, client_factory=lambda: None)
    return snapper, store, full


def _decoded(store, snap):
    with store.fetch(snap) as fh:
        return decode_delta(decompress_bytes(fh.read(), snap.compression_suffix))


def test_delta_covers_exactly_its_revisions(tmp_path):
    snapper, store, full = _snapshotter(tmp_path)

    async def go():
        await snapper._ensure_loaded()
        assert await snapper.take_delta_snapshot() is None  # nothing buffered: no delta
        snapper._on_watch_response(response((0, b"a", 101), (0, b"b", 101), (1, b"c", 102)))
        snapper._on_watch_response(response((0, b"a", 103)))
        return await snapper.take_delta_snapshot()

    snap = asyncio.run(go())
    assert (snap.kind, snap.start_revision, snap.last_revision) == (Kind.INCR, 101, 103)
    assert snap.snap_name.startswith("Incr-00000101-00000103-") and snap.snap_name.endswith(".gz")
    events = _decoded(store, snap)
    assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(b"a", 101), (b"b", 101), (b"c", 102), (b"a", 103)]
    assert snapper.latest() == (full, [snap])


def test_duplicate_events_after_a_resumed_watch_are_dropped(tmp_path):
    snapper, store, _ = _snapshotter(tmp_path)

    async def go():
        await snapper._ensure_loaded()
        snapper._on_watch_response(response((0, b"a", 101), (0, b"b", 102)))
        snapper._on_watch_response(response((0, b"b", 102), (0, b"c", 103)))  # 102 again
        return await snapper.take_delta_snapshot()

    snap = asyncio.run(go())
    assert [e.kv.mod_revision for e in _decoded(store, snap)] == [101, 102, 103]


def test_events_arriving_during_an_upload_go_into_the_next_delta(tmp_path):
    snapper, store, _ = _snapshotter(tmp_path)

    async def go():
        await snapper._ensure_loaded()
        snapper._on_watch_response(response((0, b"a", 101), (0, b"a", 102)))
        store.gate.clear()
        upload = asyncio.create_task(snapper.take_delta_snapshot())
        await asyncio.to_thread(store.entered.wait, 10)
        # the watch keeps delivering while the first delta is being stored
        snapper._on_watch_response(response((0, b"b", 103), (0, b"c", 103)))
        snapper._on_watch_response(response((1, b"a", 104)))
        store.gate.set()
        first = await upload
        second = await snapper.take_delta_snapshot()
        return first, second

    first, second = asyncio.run(go())
    assert (first.start_revision, first.last_revision) == (101, 102)
    assert (second.start_revision, second.last_revision) == (103, 104)
    assert [e.kv.mod_revision for e in _decoded(store, second)] == [103, 103, 104]


def test_a_failed_delta_is_uploaded_first_next_time(tmp_path):
    snapper, store, _ = _snapshotter(tmp_path)

    async def go():
        await snapper._ensure_loaded()
        snapper._on_watch_response(response((0, b"a", 101)))
        store.fail_next = 1
        with pytest.raises(StoreUnavailable):
            await snapper.take_delta_snapshot()
        snapper._on_watch_response(response((0, b"b", 102), (0, b"c", 103)))
        last = await snapper.take_delta_snapshot()
        return last

    last = asyncio.run(go())
    _, deltas = snapper.latest()
    assert [(d.start_revision, d.last_revision) for d in deltas] == [(101, 101), (102, 103)]
    assert last == deltas[-1]
    listed = [s for s in store.list() if s.kind is Kind.INCR]
    assert [(d.start_revision, d.last_revision) for d in listed] == [(101, 101), (102, 103)]


def test_memory_limit_wakes_the_loop_only_between_responses(tmp_path):
    snapper, store, _ = _snapshotter(tmp_path, memory_limit=300)

    async def go():
        snapper._bind_loop()
        await snapper._ensure_loaded()
        # one response holding one revision bigger than the limit: all of it is buffered first
        snapper._on_watch_response(response(*[(0, b"key-%d" % i, 101) for i in range(20)]))
        woke = snapper._wakeup.is_set()
        snap = await snapper.take_delta_snapshot()
        return woke, snap

    woke, snap = asyncio.run(go())
    assert woke
    assert (snap.start_revision, snap.last_revision) == (101, 101)
    assert len(_decoded(store, snap)) == 20


def test_a_skipped_revision_requires_a_full_snapshot(tmp_path):
    snapper, _, _ = _snapshotter(tmp_path)

    async def go():
        snapper._bind_loop()
        await snapper._ensure_loaded()
        snapper._on_watch_response(response((0, b"a", 101)))
        assert not snapper._full_required_reason
        snapper._on_watch_response(response((0, b"a", 105)))

    asyncio.run(go())
    assert snapper._full_required_reason == "watch skipped revisions"


def test_listeners_hear_of_uploaded_snapshots_only(tmp_path):
    snapper, store, _ = _snapshotter(tmp_path)
    heard = []
    snapper.add_listener(heard.append)
    snapper.add_listener(lambda s: 1 / 0)  # a failing listener changes nothing

    async def go():
        await snapper._ensure_loaded()
        snapper._on_watch_response(response((0, b"a", 101)))
        store.fail_next = 1
        with pytest.raises(StoreUnavailable):
            await snapper.take_delta_snapshot()
        assert heard == []
        return await snapper.take_delta_snapshot()

    snap = asyncio.run(go())
    assert heard == [snap]
