"""Garbage collection of old snapshots, with the Go tool's retention semantics.

Deciding and deleting are separate. :func:`plan_gc` is a pure function (a listing and a clock
in, a :class:`GCPlan` out) holding every rule; :func:`execute_plan` performs a plan against a
store, honouring dry-run and immutability. :class:`GarbageCollector` runs both every
``--garbage-collection-period``.

The rules (compatibility.md §4.2):

* A *snap stream* is one full snapshot and the deltas that follow it up to the next full. The
  latest stream (newest full and its deltas) is never touched.
* Deltas of every older stream are deleted once older than ``--delta-snapshot-retention-period``
  (0 means: as soon as a newer full exists). Deltas older than the oldest full form a stream of
  their own, without a full.
* ``LimitBased`` keeps the newest ``--max-backups`` full snapshots.
* ``Exponential`` keeps every full of the current hour, the latest full of each hour of today,
  of each of the last 7 days and of each of the 4 weeks before; older fulls go. The buckets
  are counted back from today 23:59:59 UTC exactly as the Go tool counts them, quirks included,
  so both tools agree on what a bucket keeps.
* Snapshots under retention (``immutable_until`` in the future, or a delete refused with
  :class:`ImmutableObject`) are skipped, which is not an error.
* Chunk objects (parts of multipart uploads kept as objects) are deleted once the snapshot they
  belong to is complete or superseded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Sequence

from . import metrics
from .config import SnapshotterConfig, format_duration
from .errors import ImmutableObject, ObjectNotFound, StoreError
from .retry import wait_unless_stopped
from .snapshot import Kind, Snapshot, sort_key

log = logging.getLogger(__name__)

EXPONENTIAL = "Exponential"
LIMIT_BASED = "LimitBased"
POLICIES = (EXPONENTIAL, LIMIT_BASED)
# The Go tool gives up on a stream's deltas after this many failed deletions in one cycle.
MAX_STREAM_ERRORS = 5
# Go's math.MaxInt32, the threshold that makes every "change" divide to zero (= delete).
_DELETE_ALL = 2**31 - 1
_HOUR = timedelta(hours=1)


# -- the plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class StreamPlan:
    """What to delete of one snap stream: its expired deltas (newest first), then maybe its full.

    The full is deleted only if all its deltas went, so a failure never leaves deltas whose
    base is gone while keeping the base of deltas that are gone.
    """

    deltas: tuple[Snapshot, ...] = ()
    full: Snapshot | None = None
    reason: str = ""


@dataclass(frozen=True)
class GCPlan:
    now: datetime
    policy: str
    chunks: tuple[Snapshot, ...] = ()
    streams: tuple[StreamPlan, ...] = ()
    #: Would be deleted, but the store holds them under retention until ``immutable_until``.
    immutable: tuple[Snapshot, ...] = ()
    keep: tuple[Snapshot, ...] = ()

    @property
    def deletions(self) -> list[Snapshot]:
        """Every snapshot the plan deletes, in the order it deletes them."""
        out = list(self.chunks)
        for stream in self.streams:
            out.extend(stream.deltas)
            if stream.full is not None:
                out.append(stream.full)
        return out


@dataclass
class GCResult:
    plan: GCPlan
    dry_run: bool = False
    deleted: list[Snapshot] = field(default_factory=list)
    #: Refused by the store because of retention (skips, not errors).
    skipped_immutable: list[Snapshot] = field(default_factory=list)
    failed: list[tuple[Snapshot, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


# -- pure rules ------------------------------------------------------------------------------
def split_streams(snapshots: Sequence[Snapshot]) -> list[list[Snapshot]]:
    """Non-chunk snapshots, sorted, cut before every full: ``[[full, delta...], ...]``.

    A first stream without a full holds the deltas older than the oldest full.
    """
    streams: list[list[Snapshot]] = []
    for snap in sorted((s for s in snapshots if not s.is_chunk), key=sort_key):
        if snap.kind is Kind.FULL or not streams:
            streams.append([snap])
        else:
            streams[-1].append(snap)
    return streams


def _trunc_div(a: int, b: int) -> int:
    """Go's integer division (rounds toward zero; Python's // rounds down)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def _hours(since: datetime, t: datetime) -> float:
    return (since - t).total_seconds() / 3600


def exponential_deletions(fulls: Sequence[Snapshot], now: datetime) -> list[bool]:
    """For fulls sorted oldest first, whether each is deleted by the Exponential policy.

    Walks from the newest pair to the oldest: ``snap`` is the newer full, ``older`` the one
    before it; ``older`` goes when both fall in the same hour/day/week bucket (which bucket
    size applies depends on ``older``'s age). Pairs are taken by position, so a full deleted
    as ``older`` still serves as ``snap`` of the next pair, as in the Go tool.
    """
    now = now.astimezone(timezone.utc)
    eod = datetime(now.year, now.month, now.day, 23, 59, 59, tzinfo=timezone.utc)
    tracking_week = False
    delete = [False] * len(fulls)
    for i in range(len(fulls) - 1, 0, -1):
        snap, older = fulls[i], fulls[i - 1]
        age = eod - older.created_on
        if age < timedelta(hours=24):
            threshold = 0 if older.created_on.astimezone(timezone.utc).hour == now.hour else 1
        elif age < timedelta(days=8):
            threshold = 24
        elif age < timedelta(weeks=5):
            if not tracking_week:
                # Weeks end with yesterday: the week buckets count back from yesterday's end.
                eod -= timedelta(hours=24)
                tracking_week = True
            threshold = 24 * 7
        else:
            threshold = _DELETE_ALL
        if threshold == 0:
            continue
        h_old, h_snap = _hours(eod, older.created_on), _hours(eod, snap.created_on)
        hour_change = int(h_old) - int(h_snap)
        day_change = int(h_old / 24) - int(h_snap / 24)
        week_change = int(h_old / 168) - int(h_snap / 168)
        changed = (
            _trunc_div(hour_change, threshold) != 0
            or _trunc_div(day_change * 24, threshold) != 0
            or _trunc_div(week_change * 168, threshold) != 0
        )
        delete[i - 1] = not changed
    return delete


def limit_based_deletions(fulls: Sequence[Snapshot], max_backups: int) -> list[bool]:
    """For fulls sorted oldest first: all but the newest ``max_backups`` go (the newest always stays)."""
    keep_from = max(len(fulls) - max(max_backups, 1), 0)
    return [i < keep_from for i in range(len(fulls))]


def expired_deltas(deltas: Sequence[Snapshot], now: datetime, retention: timedelta) -> list[Snapshot]:
    """Deltas created before ``now - retention``, newest first (the Go tool's deletion order)."""
    cutoff = now - retention
    return [d for d in sorted(deltas, key=sort_key, reverse=True) if d.created_on < cutoff]


def leftover_chunks(snapshots: Sequence[Snapshot]) -> list[Snapshot]:
    """Chunk objects whose upload has finished or been superseded.

    A chunk belongs to the snapshot named in its key. It is left over once a complete
    snapshot sorts at or after it (same or higher last revision, same or later creation).
    An upload in progress is for a snapshot newer than everything complete, so its chunks stay.
    (The Go tool compares the chunk's *start* revision with the latest snapshot's last revision,
    which also matches the chunks of a full snapshot being uploaded, as fulls start at 0.)
    """
    complete = [s for s in snapshots if not s.is_chunk]
    if not complete:
        return []
    latest = max(complete, key=sort_key)
    bound = (latest.last_revision, latest.created_on)
    return [s for s in snapshots if s.is_chunk and (s.last_revision, s.created_on) <= bound]


def plan_gc(
    snapshots: Sequence[Snapshot],
    *,
    policy: str,
    now: datetime,
    max_backups: int = 7,
    delta_retention: timedelta = timedelta(0),
) -> GCPlan:
    """Decide what garbage collection deletes. Pure: no store, no clock, no logging."""
    if policy not in POLICIES:
        raise ValueError(f"unknown garbage collection policy {policy!r}")
    now = now.astimezone(timezone.utc)
    immutable: list[Snapshot] = []

    def deletable(snap: Snapshot) -> bool:
        if snap.is_deletable(now):
            return True
        immutable.append(snap)
        return False

    chunks = tuple(c for c in leftover_chunks(snapshots) if deletable(c))
    streams = split_streams(snapshots)
    with_full = [s for s in streams if s[0].kind is Kind.FULL]
    fulls = [s[0] for s in with_full]
    if policy == LIMIT_BASED:
        full_gone = limit_based_deletions(fulls, max_backups)
        reason = f"more than {max_backups} full snapshots"
    else:
        full_gone = exponential_deletions(fulls, now)
        reason = "exponential retention"
    doomed_fulls = {f.key for f, gone in zip(fulls, full_gone, strict=True) if gone}

    plans: list[StreamPlan] = []
    # Every stream but the latest, newest first; a stream without a full (deltas older than
    # the oldest full) only loses expired deltas.
    for stream in reversed(streams[:-1] if len(with_full) else []):
        base = stream[0] if stream[0].kind is Kind.FULL else None
        deltas = tuple(d for d in expired_deltas([s for s in stream if s.kind is Kind.INCR], now, delta_retention)
                       if deletable(d))
        full = base if base is not None and base.key in doomed_fulls and deletable(base) else None
        if deltas or full is not None:
            plans.append(StreamPlan(deltas=deltas, full=full, reason=reason if full is not None else ""))

    gone = {s.key for s in chunks} | {s.key for p in plans for s in (*p.deltas, *([p.full] if p.full else []))}
    keep = tuple(s for s in sorted(snapshots, key=sort_key) if s.key not in gone)
    return GCPlan(now=now, policy=policy, chunks=chunks, streams=tuple(plans), immutable=tuple(immutable), keep=keep)


# -- deletion --------------------------------------------------------------------------------
def _kind_label(snap: Snapshot) -> str:
    return Kind.CHUNK.value if snap.is_chunk else snap.kind.value


def execute_plan(store, plan: GCPlan, *, dry_run: bool = False) -> GCResult:
    """Delete what ``plan`` says from ``store`` (blocking). Never raises for a single object."""
    result = GCResult(plan=plan, dry_run=dry_run, skipped_immutable=list(plan.immutable))
    store_name = getattr(store, "display", "")
    for snap in plan.immutable:
        log.info("GC: skipping snapshot under retention",
                 extra={"store": store_name, "snapshot": snap.key, "immutable_until": str(snap.immutable_until)})
    if dry_run:
        for snap in plan.deletions:
            log.info("GC: dry run, would delete snapshot", extra={"store": store_name, "snapshot": snap.key})
        return result

    def delete(snap: Snapshot) -> bool | None:
        """True deleted, None skipped (retention), False failed."""
        try:
            store.delete(snap)
        except ObjectNotFound:
            log.debug("GC: snapshot already gone", extra={"store": store_name, "snapshot": snap.key})
        except ImmutableObject:
            log.info("GC: skipping snapshot under retention", extra={"store": store_name, "snapshot": snap.key})
            result.skipped_immutable.append(snap)
            return None
        except StoreError as exc:
            log.warning("GC: failed to delete snapshot",
                        extra={"store": store_name, "snapshot": snap.key, "error": exc.reason})
            metrics.snapshot_gc_total.labels(kind=_kind_label(snap), succeeded="false").inc()
            metrics.snapshotter_failure.labels(error=type(exc).__name__).inc()
            result.failed.append((snap, exc.reason))
            return False
        metrics.snapshot_gc_total.labels(kind=_kind_label(snap), succeeded="true").inc()
        result.deleted.append(snap)
        return True

    for chunk in plan.chunks:
        log.info("GC: deleting chunk of a finished upload", extra={"store": store_name, "snapshot": chunk.key})
        delete(chunk)
    for stream in plan.streams:
        errors = 0
        for delta in stream.deltas:
            log.info("GC: deleting old delta snapshot", extra={"store": store_name, "snapshot": delta.key})
            if delete(delta) is False:
                errors += 1
                if errors >= MAX_STREAM_ERRORS:
                    break
        if stream.full is None:
            continue
        if errors:
            log.warning("GC: keeping full snapshot whose deltas could not all be deleted",
                        extra={"store": store_name, "snapshot": stream.full.key})
            continue
        log.info("GC: deleting old full snapshot",
                 extra={"store": store_name, "snapshot": stream.full.key, "reason": stream.reason})
        delete(stream.full)
    log.info("GC: total number of garbage collected snapshots",
             extra={"store": store_name, "deleted": len(result.deleted), "failed": len(result.failed),
                    "skipped_immutable": len(result.skipped_immutable)})
    return result


class GarbageCollector:
    """Runs :func:`plan_gc` and :func:`execute_plan` against one store every GC period.

    ``clock`` returns Unix seconds (``time.time``); tests pass a controllable one.
    """

    def __init__(self, store, snapshotter_config: SnapshotterConfig, clock: Callable[[], float] = time.time,
                 *, dry_run: bool = False) -> None:
        if snapshotter_config.garbage_collection_policy not in POLICIES:
            from .errors import ConfigError

            raise ConfigError(f"unknown --garbage-collection-policy {snapshotter_config.garbage_collection_policy!r}; "
                              f"expected {' or '.join(POLICIES)}")
        self.store = store
        self.config = snapshotter_config
        self.clock = clock
        self.dry_run = dry_run
        self.last_result: GCResult | None = None

    @property
    def enabled(self) -> bool:
        return self.config.garbage_collection_period > timedelta(seconds=1)

    def plan(self, now: datetime | None = None) -> GCPlan:
        now = now or datetime.fromtimestamp(self.clock(), tz=timezone.utc)
        snapshots = self.store.list(include_all=True)
        return plan_gc(
            snapshots,
            policy=self.config.garbage_collection_policy,
            now=now,
            max_backups=self.config.max_backups,
            delta_retention=self.config.delta_snapshot_retention_period,
        )

    def collect_once(self, now: datetime | None = None) -> GCResult:
        """One GC cycle (blocking). A failed listing raises its StoreError."""
        plan = self.plan(now)
        self.last_result = execute_plan(self.store, plan, dry_run=self.dry_run)
        return self.last_result

    async def run(self, stop: asyncio.Event) -> None:
        """Collect every period until ``stop`` is set; the first cycle runs after one period."""
        period = self.config.garbage_collection_period
        store_name = getattr(self.store, "display", "")
        if not self.enabled:
            log.info("GC: not running garbage collector since the period is 1s or less",
                     extra={"store": store_name, "period": format_duration(period)})
            return
        log.info("GC: starting garbage collector",
                 extra={"store": store_name, "policy": self.config.garbage_collection_policy,
                        "period": format_duration(period)})
        while not await wait_unless_stopped(stop, period.total_seconds()):
            try:
                await asyncio.to_thread(self.collect_once)
            except StoreError as exc:
                metrics.snapshotter_failure.labels(error=type(exc).__name__).inc()
                log.warning("GC: failed to list snapshots", extra={"store": store_name, "error": exc.reason})
            except Exception:  # one bad cycle must not end garbage collection for good
                log.exception("GC: cycle failed", extra={"store": store_name})
        log.info("GC: stop signal received, closing garbage collector", extra={"store": store_name})
