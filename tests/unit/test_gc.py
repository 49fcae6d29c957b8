"""Garbage collection: retention decisions with a fixed clock, deletion against a Local store."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from etcdbr import metrics
from etcdbr.config import SnapshotterConfig, StoreConfig
from etcdbr.errors import ImmutableObject, StoreUnavailable
from etcdbr.gc import (
    EXPONENTIAL,
    LIMIT_BASED,
    GarbageCollector,
    exponential_deletions,
    leftover_chunks,
    plan_gc,
    split_streams,
)
from etcdbr.snapshot import Kind, Snapshot, parse_key
from etcdbr.snapstore.local import LocalStore

UTC = timezone.utc
PREFIX = "backups/v2"
NOW = datetime(2024, 3, 15, 10, 30, tzinfo=UTC)  # a Friday; 2024 is a leap year


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2024, month, day, hour, minute, tzinfo=UTC)


class Chain:
    """Builds a revision-contiguous history of fulls and deltas in creation order."""

    def __init__(self) -> None:
        self.rev = 100
        self.snaps: list[Snapshot] = []

    def full(self, created: datetime, **kw) -> Snapshot:
        self.rev += 10
        snap = Snapshot(Kind.FULL, 0, self.rev, created, ".gz", prefix=PREFIX, **kw)
        self.snaps.append(snap)
        return snap

    def delta(self, created: datetime, **kw) -> Snapshot:
        snap = Snapshot(Kind.INCR, self.rev + 1, self.rev + 5, created, ".gz", prefix=PREFIX, **kw)
        self.rev += 5
        self.snaps.append(snap)
        return snap


def created(snaps) -> set[datetime]:
    return {s.created_on for s in snaps}


def fulls_of(snaps) -> list[Snapshot]:
    return [s for s in snaps if s.kind is Kind.FULL]


# -- Exponential -----------------------------------------------------------------------------
def six_weeks_of_fulls() -> Chain:
    chain = Chain()
    day = at(2, 1, 0)
    while day.date() < NOW.date():
        chain.full(day.replace(hour=6))
        chain.full(day.replace(hour=18))
        day += timedelta(days=1)
    for hour, minute in ((0, 15), (8, 30), (9, 10), (9, 50), (10, 5), (10, 20)):
        chain.full(at(3, 15, hour, minute))
    return chain


def test_exponential_keeps_current_hour_hourly_today_daily_week_weekly_month():
    chain = six_weeks_of_fulls()
    fulls = fulls_of(chain.snaps)
    assert len(fulls) == 2 * 43 + 6
    plan = plan_gc(chain.snaps, policy=EXPONENTIAL, now=NOW)
    expected = {
        # today: both of the current hour; the latest of every other hour (09:10 shares 09:xx with 09:50)
        at(3, 15, 10, 20), at(3, 15, 10, 5), at(3, 15, 9, 50), at(3, 15, 8, 30), at(3, 15, 0, 15),
        # the latest of each of the 7 days before today
        at(3, 14, 18), at(3, 13, 18), at(3, 12, 18), at(3, 11, 18), at(3, 10, 18), at(3, 9, 18), at(3, 8, 18),
        # the latest of each of the 4 weeks before those days (weeks end on Thursdays, 23:59:59)
        at(3, 7, 18), at(2, 29, 18), at(2, 22, 18), at(2, 15, 18),
    }
    assert created(plan.keep) == expected
    assert created(s.full for s in plan.streams) == created(fulls) - expected
    assert plan.chunks == () and plan.immutable == ()


def test_exponential_across_midnight_keeps_yesterday_latest():
    fulls = [
        Snapshot(Kind.FULL, 0, 10 * i + 10, t, prefix=PREFIX)
        for i, t in enumerate([at(3, 14, 22), at(3, 14, 23, 10), at(3, 14, 23, 50), at(3, 15, 0, 5), at(3, 15, 10, 1)])
    ]
    gone = exponential_deletions(fulls, NOW)
    assert gone == [True, True, False, False, False]


def test_exponential_deletes_everything_older_than_five_weeks_but_never_the_latest():
    fulls = [Snapshot(Kind.FULL, 0, 10 * i + 10, at(1, 1, 0) + timedelta(days=i), prefix=PREFIX) for i in range(5)]
    assert exponential_deletions(fulls, NOW) == [True, True, True, True, False]
    plan = plan_gc(fulls, policy=EXPONENTIAL, now=NOW)
    assert [s.created_on for s in plan.keep] == [fulls[-1].created_on]


def test_single_full_and_only_deltas_are_never_collected():
    chain = Chain()
    chain.full(at(1, 1, 0))
    for d in range(5):
        chain.delta(at(1, 1, 1 + d))
    for policy in (EXPONENTIAL, LIMIT_BASED):
        plan = plan_gc(chain.snaps, policy=policy, now=NOW, max_backups=1)
        assert plan.deletions == []
        plan = plan_gc(chain.snaps[1:], policy=policy, now=NOW, max_backups=1)
        assert plan.deletions == []
    assert plan_gc([], policy=EXPONENTIAL, now=NOW).deletions == []


# -- LimitBased and delta retention ----------------------------------------------------------
def daily_chain(days: int = 10, deltas_per_day: int = 3) -> Chain:
    chain = Chain()
    for d in range(days):
        base = NOW - timedelta(days=days - 1 - d, hours=2)
        chain.full(base)
        for k in range(deltas_per_day):
            chain.delta(base + timedelta(minutes=20 * (k + 1)))
    return chain


def test_limit_based_keeps_newest_fulls_and_only_latest_deltas():
    chain = daily_chain()
    plan = plan_gc(chain.snaps, policy=LIMIT_BASED, now=NOW, max_backups=3)
    fulls = fulls_of(chain.snaps)
    kept_fulls = fulls_of(plan.keep)
    assert kept_fulls == fulls[-3:]
    latest_deltas = chain.snaps[-3:]
    assert all(s.kind is Kind.INCR for s in latest_deltas)
    assert [s for s in plan.keep if s.kind is Kind.INCR] == latest_deltas
    assert len(plan.deletions) == len(chain.snaps) - 6
    # deltas of a stream go before its full, newest first
    oldest = plan.streams[-1]
    assert oldest.full == fulls[0]
    assert [d.last_revision for d in oldest.deltas] == sorted((d.last_revision for d in oldest.deltas), reverse=True)


def test_limit_based_with_more_backups_than_exist_only_prunes_deltas():
    chain = daily_chain(days=4)
    plan = plan_gc(chain.snaps, policy=LIMIT_BASED, now=NOW, max_backups=7)
    assert all(s.full is None for s in plan.streams)
    assert fulls_of(plan.keep) == fulls_of(chain.snaps)
    assert len(plan.deletions) == 9


def test_delta_retention_period_keeps_recent_deltas_of_older_streams():
    chain = Chain()
    chain.full(NOW - timedelta(hours=5))
    old = [chain.delta(NOW - timedelta(hours=4, minutes=m)) for m in (30, 20)]
    chain.full(NOW - timedelta(hours=4))
    recent = [chain.delta(NOW - timedelta(hours=h)) for h in (3, 2)]
    chain.full(NOW - timedelta(minutes=90))
    latest = chain.delta(NOW - timedelta(hours=0, minutes=1))
    plan = plan_gc(chain.snaps, policy=LIMIT_BASED, now=NOW, max_backups=10,
                   delta_retention=timedelta(hours=3, minutes=30))
    assert set(plan.deletions) == set(old)
    assert set(recent) <= set(plan.keep) and latest in plan.keep
    plan = plan_gc(chain.snaps, policy=LIMIT_BASED, now=NOW, max_backups=10)
    assert set(plan.deletions) == set(old + recent)


def test_deltas_older_than_the_oldest_full_are_an_orphan_stream():
    chain = Chain()
    orphans = [chain.delta(at(3, 1, h)) for h in (1, 2)]
    chain.full(at(3, 2, 0))
    chain.full(at(3, 15, 9))
    streams = split_streams(chain.snaps)
    assert [len(s) for s in streams] == [2, 1, 1]
    plan = plan_gc(chain.snaps, policy=LIMIT_BASED, now=NOW, max_backups=2)
    assert set(plan.deletions) == set(orphans)
    assert all(s.full is None or s.full.kind is Kind.FULL for s in plan.streams)


# -- immutability and chunks -----------------------------------------------------------------
def test_immutable_snapshots_are_skipped_not_counted():
    chain = daily_chain(days=5, deltas_per_day=1)
    locked_until = NOW + timedelta(days=1)
    snaps = [replace(s, immutable_until=locked_until) if i in (0, 1) else s for i, s in enumerate(chain.snaps)]
    expired_lock = [replace(s, immutable_until=NOW - timedelta(seconds=1)) for s in snaps]
    plan = plan_gc(snaps, policy=LIMIT_BASED, now=NOW, max_backups=1)
    assert set(plan.immutable) == {snaps[0], snaps[1]}
    assert snaps[0] in plan.keep and snaps[1] in plan.keep
    assert snaps[0] not in plan.deletions and snaps[1] not in plan.deletions
    assert len(plan.deletions) == len(snaps) - 2 - 2  # locked pair + latest full and its delta
    plan = plan_gc(expired_lock, policy=LIMIT_BASED, now=NOW, max_backups=1)
    assert plan.immutable == () and len(plan.deletions) == len(snaps) - 2


def test_leftover_chunks_of_finished_uploads_only():
    done_full = parse_key(f"{PREFIX}/Full-00000000-00000200-1710400000.gz")
    done_delta = parse_key(f"{PREFIX}/Incr-00000201-00000250-1710400100.gz")
    finished = parse_key(f"{PREFIX}/Incr-00000201-00000250-1710400100.gz/0000000001")
    superseded = parse_key(f"{PREFIX}/Full-00000000-00000150-1710300000.gz/0000000002")
    uploading_delta = parse_key(f"{PREFIX}/Incr-00000251-00000300-1710400200.gz/0000000001")
    # a full at the same revision as the latest delta, created later: still being uploaded
    uploading_full = parse_key(f"{PREFIX}/Full-00000000-00000250-1710400200.gz/0000000001")
    snaps = [done_full, done_delta, finished, superseded, uploading_delta, uploading_full]
    assert set(leftover_chunks(snaps)) == {finished, superseded}
    assert leftover_chunks([finished, uploading_delta]) == []


# -- GarbageCollector against a Local store --------------------------------------------------
class LockedLocalStore(LocalStore):
    """A Local store whose listed objects are under retention for keys in ``locked``
    (as an S3 bucket with Object Lock would answer a delete)."""

    def __init__(self, config, locked=(), fail=()) -> None:
        super().__init__(config)
        self.locked = set(locked)
        self.fail = set(fail)

    def _delete_object(self, key, version_id=""):
        if key in self.locked:
            raise ImmutableObject("object is WORM protected", endpoint=self.display, key=key)
        if key in self.fail:
            raise StoreUnavailable("connection reset", endpoint=self.display, key=key)
        super()._delete_object(key, version_id)


def _fill(store: LocalStore, snaps) -> None:
    for snap in snaps:
        store.save(snap, io.BytesIO(b"x"))


def _names(store) -> set[str]:
    return {s.key for s in store.list(include_all=True)}


def _store_config(tmp_path) -> StoreConfig:
    return StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="backups")


def _counter(kind: str, succeeded: str) -> float:
    return metrics.REGISTRY.get_sample_value("etcdbr_snapshot_gc_total",
                                             {"kind": kind, "succeeded": succeeded}) or 0.0


def test_collect_once_deletes_with_controllable_clock(tmp_path):
    store = LocalStore(_store_config(tmp_path))
    chain = daily_chain(days=6, deltas_per_day=2)
    _fill(store, chain.snaps)
    chunk = f"{PREFIX}/Incr-00000101-00000105-1600000000.gz/0000000001"
    (store.root / chunk).parent.mkdir(parents=True)
    (store.root / chunk).write_bytes(b"part")
    config = SnapshotterConfig(garbage_collection_policy=LIMIT_BASED, max_backups=2)
    before = {k: _counter(k, "true") for k in ("Full", "Incr", "Chunk")}
    gc = GarbageCollector(store, config, clock=lambda: NOW.timestamp())
    result = gc.collect_once()
    assert result.ok and not result.dry_run
    fulls = fulls_of(chain.snaps)
    assert _names(store) == {s.key for s in [fulls[-2], fulls[-1], *chain.snaps[-2:]]}
    assert _counter("Full", "true") - before["Full"] == 4
    assert _counter("Incr", "true") - before["Incr"] == 10
    assert _counter("Chunk", "true") - before["Chunk"] == 1
    # idempotent: nothing more to do
    assert gc.collect_once().deleted == []


def test_dry_run_deletes_nothing(tmp_path):
    store = LocalStore(_store_config(tmp_path))
    chain = daily_chain(days=3, deltas_per_day=1)
    _fill(store, chain.snaps)
    gc = GarbageCollector(store, SnapshotterConfig(garbage_collection_policy=LIMIT_BASED, max_backups=1),
                          clock=lambda: NOW.timestamp(), dry_run=True)
    result = gc.collect_once()
    assert result.dry_run and result.deleted == [] and len(result.plan.deletions) == 4
    assert _names(store) == {s.key for s in chain.snaps}


def test_immutable_object_on_delete_is_a_skip_and_failures_protect_the_full(tmp_path):
    chain = daily_chain(days=3, deltas_per_day=2)
    fulls = fulls_of(chain.snaps)
    locked_full = fulls[0]
    failing_delta = chain.snaps[chain.snaps.index(fulls[1]) + 1]
    store = LockedLocalStore(_store_config(tmp_path), locked={locked_full.key}, fail={failing_delta.key})
    _fill(store, chain.snaps)
    failed_before = _counter("Incr", "false")
    gc = GarbageCollector(store, SnapshotterConfig(garbage_collection_policy=LIMIT_BASED, max_backups=1),
                          clock=lambda: NOW.timestamp())
    result = gc.collect_once()
    assert [s.key for s in result.skipped_immutable] == [locked_full.key]
    assert [s.key for s, _ in result.failed] == [failing_delta.key]
    assert _counter("Incr", "false") - failed_before == 1
    left = _names(store)
    # the full whose delta could not be deleted stays, with that delta
    assert {locked_full.key, fulls[1].key, failing_delta.key, fulls[2].key} <= left
    assert len(left) == 4 + 2  # plus the latest stream's two deltas


def test_run_waits_a_period_and_stops(tmp_path):
    store = LocalStore(_store_config(tmp_path))
    chain = daily_chain(days=3, deltas_per_day=0)
    _fill(store, chain.snaps)
    config = SnapshotterConfig(garbage_collection_policy=LIMIT_BASED, max_backups=1,
                               garbage_collection_period=timedelta(seconds=1.05))
    gc = GarbageCollector(store, config, clock=lambda: NOW.timestamp())
    collect_once, collected = gc.collect_once, threading.Event()
    first_cycle = {}

    def observed():
        first_cycle.setdefault("after", time.monotonic() - started)
        first_cycle.setdefault("snapshots", len(_names(store)))
        try:
            return collect_once()
        finally:
            collected.set()

    gc.collect_once = observed

    async def scenario():
        stop = asyncio.Event()
        task = asyncio.create_task(gc.run(stop))
        assert await asyncio.to_thread(collected.wait, 10)
        stop.set()
        await asyncio.wait_for(task, 2)

    started = time.monotonic()
    asyncio.run(scenario())
    # first cycle one period after start
    assert first_cycle["after"] >= 1.0 and first_cycle["snapshots"] == 3
    assert gc.last_result is not None
    assert len(_names(store)) == 1


def test_period_of_one_second_disables(tmp_path):
    store = LocalStore(_store_config(tmp_path))
    gc = GarbageCollector(store, SnapshotterConfig(garbage_collection_period=timedelta(seconds=1)))
    assert not gc.enabled
    asyncio.run(asyncio.wait_for(gc.run(asyncio.Event()), 1))


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError):
        plan_gc([], policy="Linear", now=NOW)
