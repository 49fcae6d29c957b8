"""The BackupCopier: keeps a secondary snapstore a verified copy of the primary.

Contract (``spec/dual-endpoint.md``; the log sentences below are the ones operators grep for):

* ``snapstore.open_stores(config)`` opens both endpoints at startup. The primary must work (else
  the command fails); a secondary that cannot be opened or reached means single-endpoint mode with
  ``Only primary snapstore available, using single endpoint``; both failing is a startup error.
* A sync run lists the primary, lists the secondary, compares them by ``Snapshot.copier_key()``
  (``{directory}/{name}:{start}-{end}``, ``.final`` ignored), copies what the secondary lacks and
  deletes what only the secondary has. A store whose listing fails is never taken for empty: the
  run fails and changes nothing.
* A copy counts only once verified: the destination is read back and its size and SHA-256 must
  equal those of the source bytes. A failed verification deletes the bad copy. With
  ``--backup-sync-verify=metadata`` a server-side copy counts without downloads when the service
  reports the same size and content digest (S3 ETag, GCS CRC32C) for both objects; else it is read back.
* Copies are written under the secondary's prefix with ``.final`` stripped from the name, as the
  Go copier does (a WORM bucket accepts a name once; the key ignores the suffix anyway).
* Orphan deletion honours immutability and a safety guard: nothing is deleted when the primary
  lists no snapshot, nor when a run would delete more than ``max_delete_fraction`` of the
  secondary. Keys copied (or being copied) since the primary was listed are never orphans: an
  event-driven copy of a snapshot uploaded after that listing may already be on the secondary.
* ``notify(snapshot)`` (from any thread) copies a just-uploaded snapshot at once; the periodic run
  is the safety net. A key is never copied twice at the same time.
* ``stop(grace)`` drains, then stops: no new sync run starts, but what is queued, in flight or
  notified meanwhile (the snapshotter's final delta above all) is still copied and verified, for
  at most ``grace`` seconds; then in-flight copies abort their upload (the store's save leaves
  nothing behind) and every snapshot left uncopied is logged by name for the next start.
* Outages are reported when they happen: the first failed copy or listing of an endpoint logs a
  WARN naming it and the reason and flips its availability (metric and status); while an endpoint
  is down the periodic run comes every ``retry_backoff`` (at most every ``period``) as a probe, and
  the run that finds it back logs an INFO with how long it was down and how many copies caught up.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import BinaryIO, Callable, Iterable, Sequence

from . import metrics
from .config import SyncConfig
from .errors import (
    ConfigError,
    ImmutableObject,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
)
from .logs import redact
from .snapshot import LAYOUT_V1, LAYOUT_V2, Kind, Snapshot, sort_key
from .snapstore import SnapStore
from .snapstore.streams import HashingReader

log = logging.getLogger(__name__)

READ_BLOCK = 1024 * 1024
PRIMARY, SECONDARY = "primary", "secondary"
#: How often a drain looks again at what is left (it also wakes whenever a copy ends).
DRAIN_POLL = 0.5
#: Longest wait between retries of a copy while draining: the grace period is short.
DRAIN_RETRY_WAIT = 1.0


# -- planning (pure) ----------------------------------------------------------------------------
@dataclass
class SyncPlan:
    """What one run will do. ``to_copy`` includes the snapshots of ``to_replace``."""

    to_copy: list[Snapshot] = field(default_factory=list)
    to_replace: list[Snapshot] = field(default_factory=list)   # secondary copies whose size differs
    orphans: list[Snapshot] = field(default_factory=list)      # deletable snapshots only on the secondary
    to_delete: list[Snapshot] = field(default_factory=list)    # ``orphans`` unless the guard stopped it
    immutable: list[Snapshot] = field(default_factory=list)    # orphans under retention: left alone
    deletion_skipped: str = ""                                 # why the guard skipped deletion
    primary_count: int = 0
    secondary_count: int = 0

    @property
    def missing_keys(self) -> set[str]:
        return {s.copier_key() for s in self.to_copy}


def _layout_prefixes(prefix_v2: str) -> set[str]:
    """A store's own trees: ``<prefix>/v2`` and the legacy ``<prefix>/v1`` beside it."""
    base = prefix_v2[: -len(LAYOUT_V2)]
    return {prefix_v2, base + LAYOUT_V1}


def own_snapshots(snaps: Iterable[Snapshot], prefix_v2: str) -> list[Snapshot]:
    """Whole snapshots of this store's trees. A listing covers the parent of ``<prefix>/v2``, so it
    may hold another store's tree (a secondary prefix nested in the primary's); never touch those."""
    mine = _layout_prefixes(prefix_v2)
    return [s for s in snaps if not s.is_chunk and s.prefix in mine]


def select_backups(snaps: Sequence[Snapshot], max_backups: int = -1, max_age_days: int = -1,
                   now: datetime | None = None) -> list[Snapshot]:
    """The ``copy`` command's filter: backups (a full plus the deltas after it), newest first, at
    most ``max_backups`` of them, only those whose full is younger than ``max_age_days``."""
    if max_backups < 0 and max_age_days < 0:
        return list(snaps)
    now = now or datetime.now(timezone.utc)
    backups: list[list[Snapshot]] = []
    for snap in sorted(snaps, key=sort_key):
        if snap.kind is Kind.FULL:
            backups.append([snap])
        elif backups:  # deltas older than the oldest full belong to no backup
            backups[-1].append(snap)
    selected: list[Snapshot] = []
    taken = 0
    for backup in reversed(backups):
        if 0 <= max_backups <= taken:
            break
        if max_age_days >= 0 and backup[0].created_on <= now - timedelta(days=max_age_days):
            continue
        selected.extend(backup)
        taken += 1
    selected.sort(key=sort_key)
    return selected


def plan_sync(primary: Sequence[Snapshot], secondary: Sequence[Snapshot], *, max_delete_fraction: float = 0.5,
              delete_orphans: bool = True, selection: Sequence[Snapshot] | None = None,
              protected_keys: Iterable[str] = (), now: datetime | None = None) -> SyncPlan:
    """Compare two listings (already reduced to each store's own snapshots).

    ``selection`` limits what is copied (the copy command's filters); orphans are always judged
    against the whole primary listing so a filter never deletes older backups.
    ``protected_keys`` are never orphans: keys copied or being copied since the primary was
    listed (a snapshot uploaded after that listing may already be on the secondary).
    """
    now = now or datetime.now(timezone.utc)
    plan = SyncPlan(primary_count=len(primary), secondary_count=len(secondary))
    on_secondary: dict[str, Snapshot] = {}
    for snap in secondary:
        on_secondary.setdefault(snap.copier_key(), snap)
    primary_keys = {s.copier_key() for s in primary}

    seen: set[str] = set()
    for snap in (primary if selection is None else selection):
        key = snap.copier_key()
        if key in seen:
            continue
        seen.add(key)
        copy = on_secondary.get(key)
        if copy is None:
            plan.to_copy.append(snap)
        elif snap.size is not None and copy.size is not None and snap.size != copy.size:
            # We verify every copy we make, so a copy of another size is not ours or is damaged.
            plan.to_copy.append(snap)
            plan.to_replace.append(copy)

    if not delete_orphans:
        return plan
    protected = set(protected_keys)
    for snap in secondary:
        key = snap.copier_key()
        if key in primary_keys or key in protected:
            continue
        (plan.orphans if snap.is_deletable(now) else plan.immutable).append(snap)
    plan.to_delete = list(plan.orphans)
    if plan.orphans:
        if not primary:
            plan.deletion_skipped = (
                f"the primary lists no snapshots, so deleting {len(plan.orphans)} snapshots would empty the "
                "secondary; an empty or misconfigured primary must never wipe the secondary")
        elif len(plan.orphans) > max_delete_fraction * len(secondary):
            plan.deletion_skipped = (
                f"deleting {len(plan.orphans)} of its {len(secondary)} snapshots is more than the allowed fraction "
                f"{max_delete_fraction:g} (--backup-sync-max-delete-fraction)")
        if plan.deletion_skipped:
            plan.to_delete = []
    return plan


def destination_for(src: Snapshot, dst_prefix_v2: str) -> Snapshot:
    """Where a copy goes: the secondary's tree of the same layout, without ``.final``."""
    prefix = dst_prefix_v2
    if src.prefix.split("/")[-1] == LAYOUT_V1:
        prefix = dst_prefix_v2[: -len(LAYOUT_V2)] + LAYOUT_V1
    return replace(src.with_prefix(prefix), is_final=False)


# -- results ------------------------------------------------------------------------------------
@dataclass
class SyncResult:
    started: datetime
    duration: float = 0.0
    planned_copies: int = 0
    planned_deletions: int = 0
    copied: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    cancelled: list[str] = field(default_factory=list)
    vanished: list[str] = field(default_factory=list)     # gone from the primary before we copied it
    deleted: list[str] = field(default_factory=list)
    delete_failed: dict[str, str] = field(default_factory=dict)
    immutable: list[str] = field(default_factory=list)
    deletion_skipped: str = ""
    error: str = ""                                      # the run could not compare the stores at all
    bytes_copied: int = 0
    plan: SyncPlan | None = None

    @property
    def ok(self) -> bool:
        """Everything found was handled (immutable and too-new orphans are not failures)."""
        return not (self.error or self.failed or self.cancelled or self.delete_failed or self.deletion_skipped)

    def errors(self) -> list[str]:
        out = [self.error] if self.error else []
        out += [f"copy {name}: {reason}" for name, reason in self.failed.items()]
        out += [f"delete {name}: {reason}" for name, reason in self.delete_failed.items()]
        if self.deletion_skipped:
            out.append(f"deletion skipped: {self.deletion_skipped}")
        if self.cancelled:
            out.append(f"{len(self.cancelled)} copies cancelled by shutdown")
        return [redact(e) for e in out]

    def to_json(self) -> dict:
        return {
            "start": self.started.isoformat(),
            "durationSeconds": round(self.duration, 3),
            "plannedCopies": self.planned_copies,
            "plannedDeletions": self.planned_deletions,
            "copied": len(self.copied),
            "deleted": len(self.deleted),
            "failed": len(self.failed),
            "immutable": len(self.immutable),
            "bytesCopied": self.bytes_copied,
            "succeeded": self.ok,
            "errors": self.errors(),
        }


class CopyCancelled(Exception):
    """Raised from inside a copy's read when the copier stops; the store aborts its upload."""


class SourceGone(Exception):
    """The snapshot was deleted from the primary (by its GC) after the listing: nothing to copy."""


class EndpointFailure(Exception):
    """A store call of one endpoint failed during a copy: ``role`` says whose, ``cause`` what."""

    def __init__(self, role: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.role = role
        self.cause = cause


def _on(role: str, fn, *args):
    """``fn(*args)`` with any failure of the store attributed to ``role``."""
    try:
        return fn(*args)
    except (CopyCancelled, SourceGone, EndpointFailure, IntegrityError, ObjectNotFound):
        raise
    except Exception as exc:
        raise EndpointFailure(role, exc) from exc


class _CancellableReader(io.RawIOBase):
    """The primary's stream as the secondary's save reads it: stops with the copier, and a read
    failure is the primary's (the save would otherwise look like the secondary's failure)."""

    def __init__(self, raw: BinaryIO, stopping: threading.Event) -> None:
        self.raw = raw
        self.stopping = stopping

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.stopping.is_set():
            raise CopyCancelled("copier stopping")
        try:
            return self.raw.read(size) if size is not None and size >= 0 else self.raw.read()
        except (CopyCancelled, EndpointFailure):
            raise
        except Exception as exc:
            raise EndpointFailure(PRIMARY, exc) from exc

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


def _digest(stream: BinaryIO, stopping: threading.Event) -> tuple[int, str]:
    hasher, count = hashlib.sha256(), 0
    with stream:
        while True:
            if stopping.is_set():
                raise CopyCancelled("copier stopping")
            block = stream.read(READ_BLOCK)
            if not block:
                break
            hasher.update(block)
            count += len(block)
    return count, hasher.hexdigest()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return redact(exc.reason)
    return redact(str(exc) or type(exc).__name__)


def _is_outage(exc: BaseException) -> bool:
    """Does this failure say the endpoint itself cannot be used (rather than one object)?"""
    return not isinstance(exc, (ObjectNotFound, ImmutableObject, IntegrityError, CopyCancelled, SourceGone))


def _retryable(exc: BaseException) -> bool:
    # Facts about the request (missing, refused, locked, misconfigured) do not change on retry;
    # transport failures and a copy that failed verification may.
    if isinstance(exc, (ObjectNotFound, PermissionDenied, ImmutableObject, ConfigError, CopyCancelled)):
        return False
    if isinstance(exc, StoreError):
        return isinstance(exc, StoreUnavailable)
    return True


#: ``progress(event, snapshot, value)``: ("plan", None, operations), ("copied", snap, bytes),
#: ("deleted", snap, 0), ("failed", snap, 0). Called on the event loop or in a copy thread.
ProgressFn = Callable[[str, "Snapshot | None", int], None]


# -- the copier ---------------------------------------------------------------------------------
class BackupCopier:
    """Copies primary → secondary: an initial sync, a periodic sync, and event-driven copies.

    All public coroutines run on one event loop; store calls run in a private thread pool so a
    slow endpoint never starves the loop's default executor (used by the snapshotter).
    """

    def __init__(self, primary: SnapStore, secondary: SnapStore, sync_config: SyncConfig, *,
                 progress: ProgressFn | None = None) -> None:
        self.primary = primary
        self.secondary = secondary
        self.config = sync_config
        self.progress = progress
        self._stopping = threading.Event()          # the hard stop; read by copy threads
        self._stop_event: asyncio.Event | None = None   # the same, for waits on the loop
        self._draining = False                      # no new runs; queued and in-flight copies go on
        self._wake: asyncio.Event | None = None     # wakes the periodic loop (drain, recovery)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = ThreadPoolExecutor(max(1, sync_config.concurrent_copies) + 2, thread_name_prefix="copier")
        self._slots: asyncio.Semaphore | None = None
        self._run_lock: asyncio.Lock | None = None
        self._inflight: dict[str, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._queue: asyncio.Queue | None = None
        self._worker_task: asyncio.Task | None = None
        # Keys known to be on each endpoint: the last listing, plus verified copies (secondary)
        # and notified uploads (primary) since. Their sizes are the counts /sync/status serves.
        self._on_secondary: set[str] = set()
        self._on_primary: set[str] = set()
        self._listed = {PRIMARY: False, SECONDARY: False}
        # Keys copied since the current run listed the primary: never orphans of that run.
        self._copied_during_run: set[str] | None = None
        self._pending: dict[str, Snapshot] = {}
        self._queued_at: dict[str, float] = {}     # when notify() queued a key (monotonic)
        self._available = {PRIMARY: None, SECONDARY: None}
        self._down_since: dict[str, float] = {}    # role -> monotonic time of its first failure
        self._recovered: dict[str, list] = {}      # role -> [seconds it was down, copies since]
        self._last_run: SyncResult | None = None
        self._last_success: float | None = None
        self._last_copy: float | None = None
        self._runs = 0
        self._running = False

    # -- lifecycle ----------------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._stop_event = asyncio.Event()
        if self._stopping.is_set():
            self._stop_event.set()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, self.config.concurrent_copies))
        self._run_lock = asyncio.Lock()
        self._queue = asyncio.Queue()

    async def start(self) -> None:
        """Start the background loop: one sync at once, then one every ``sync.period``."""
        self._bind_loop()
        if self._loop_task is not None:
            return
        log.info("Starting backup copier...",
                 extra={"primary": self.primary.display, "secondary": self.secondary.display,
                        "period": str(self.config.period)})
        self._loop_task = asyncio.create_task(self._periodic(), name="backup-copier")
        self._worker_task = asyncio.create_task(self._notified(), name="backup-copier-events")

    def _next_wait(self) -> float:
        """Seconds until the next run: the period, or sooner while an endpoint is down (that run
        is the probe that notices it is back)."""
        period = max(self.config.period.total_seconds(), 0.01)
        if False in self._available.values():
            return min(period, max(self.config.retry_backoff.total_seconds(), 0.01))
        return period

    async def _periodic(self) -> None:
        assert self._wake is not None
        while not (self._draining or self._stopping.is_set()):
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a run must never end the loop
                log.error("sync run failed unexpectedly", extra={"error": _reason(exc)}, exc_info=True)
            if self._draining or self._stopping.is_set():
                return
            self._wake.clear()  # a recovery noticed during the run was caught up by that run
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._next_wait())
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _wake_loop(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def begin_drain(self) -> None:
        """Start no more sync runs, but keep copying what is queued and in flight, and what
        ``notify`` hands over from now on (the snapshotter's final delta). ``stop`` finishes it."""
        if self._draining or self._stopping.is_set():
            return
        self._draining = True
        self._wake_loop()
        if self._loop_task is not None:
            log.info("backup copier draining: no new sync runs; copying what is queued and in flight",
                     extra={"pending": len(self._pending), "in_flight": len(self._inflight)})

    async def stop(self, grace: float = 30.0) -> None:
        """Drain, then stop: copy and verify what is queued and in flight (and whatever ``notify``
        hands over meanwhile) for at most ``grace`` seconds, then abort what is left (aborted
        uploads leave nothing on the secondary) and log each snapshot left behind by name."""
        started = self._loop_task is not None
        if started:
            self._bind_loop()
            self.begin_drain()
            await self._drain(time.monotonic() + max(0.0, grace))
        self._stopping.set()
        if self._stop_event is not None:
            self._stop_event.set()
        if self._worker_task is not None:
            self._worker_task.cancel()  # it only waits for events; the copies it spawned are in _tasks
        waiting = [t for t in (self._loop_task, self._worker_task) if t is not None] + list(self._tasks)
        if waiting:
            # What is still running now sees the stop flag at its next read and aborts its upload.
            _, pending = await asyncio.wait(waiting, timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._loop_task = self._worker_task = None
        left = sorted((s for k, s in self._pending.items() if k not in self._on_secondary), key=sort_key)
        if started:
            for snap in left:
                log.warning("snapshot left behind on the primary at shutdown; the next start copies it",
                            extra={"snapshot": snap.snap_name, "secondary": self.secondary.display})
        # Threads still running end at their next read (the stop flag); do not wait for them.
        self._pool.shutdown(wait=False, cancel_futures=True)
        if started:
            if left:
                log.warning(f"backup copier stopped with {len(left)} snapshots not copied to the secondary",
                            extra={"grace": grace, "secondary": self.secondary.display})
            else:
                log.info("backup copier stopped; the secondary holds every snapshot it was given",
                         extra={"secondary": self.secondary.display})

    async def _drain(self, deadline: float) -> None:
        """Until ``deadline``: give each snapshot not yet on the secondary one more copy (with its
        retries), let the running sync run and the copies in flight finish, and take what
        ``notify`` queues meanwhile."""
        assert self._queue is not None
        tried: set[str] = set()
        while True:
            for key, snap in list(self._pending.items()):
                if key in tried or key in self._inflight or key in self._on_secondary:
                    continue
                tried.add(key)
                self._spawn(self._copy_and_count(snap, None))
            busy = [t for t in (self._loop_task,) if t is not None and not t.done()] + list(self._tasks)
            if not busy and self._queue.empty():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if busy:
                await asyncio.wait(busy, timeout=min(remaining, DRAIN_POLL), return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(min(remaining, DRAIN_POLL / 10))

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set() or self._draining

    # -- event-driven copies ------------------------------------------------------------------
    def notify(self, snapshot: Snapshot) -> None:
        """Queue a snapshot just uploaded to the primary for an immediate copy. Any thread may call;
        accepted until the hard stop, so a drain still takes the snapshotter's final delta."""
        loop = self._loop
        if loop is None or self._stopping.is_set() or snapshot is None or snapshot.is_chunk:
            return
        try:
            loop.call_soon_threadsafe(self._enqueue, snapshot)
        except RuntimeError:  # the loop is closed: we are shutting down
            pass

    def _enqueue(self, snapshot: Snapshot) -> None:
        key = snapshot.copier_key()
        self._pending.setdefault(key, snapshot)
        self._queued_at.setdefault(key, time.monotonic())
        if self._listed[PRIMARY]:
            self._on_primary.add(key)
            self._update_counts()
        metrics.sync_pending.set(len(self._pending))
        assert self._queue is not None
        self._queue.put_nowait(snapshot)

    async def _notified(self) -> None:
        assert self._queue is not None
        while not self._stopping.is_set():
            snapshot = await self._queue.get()
            key = snapshot.copier_key()
            if key in self._on_secondary:
                self._pending.pop(key, None)
                continue
            if self._available[SECONDARY] is False and not self._draining:
                # The secondary is down: retrying every event would only pile up errors. The probe
                # run copies it once the secondary answers again (a drain tries anyway).
                continue
            self._spawn(self._copy_and_count(snapshot, None))

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _copy_and_count(self, snapshot: Snapshot, result: SyncResult | None) -> None:
        await self._copy_keyed(snapshot, result or SyncResult(started=datetime.now(timezone.utc)))

    # -- endpoint state -----------------------------------------------------------------------
    def _store(self, role: str) -> SnapStore:
        return self.primary if role == PRIMARY else self.secondary

    def _endpoint_failed(self, role: str, exc: BaseException) -> None:
        """An endpoint failed a copy, listing or deletion: the first failure flips its state at
        once (metric, status) and says so; later ones while it is down add nothing."""
        metrics.endpoint_up.labels(endpoint=role).set(0)
        if self._available[role] is False:
            return
        self._available[role] = False
        self._down_since[role] = time.monotonic()
        self._recovered.pop(role, None)
        log.warning(f"{role.capitalize()} snapstore unavailable",
                    extra={"endpoint": self._store(role).display, "reason": _reason(exc)})

    def _endpoint_ok(self, role: str) -> None:
        metrics.endpoint_up.labels(endpoint=role).set(1)
        was = self._available[role]
        self._available[role] = True
        if was is False:
            down = time.monotonic() - self._down_since.pop(role, time.monotonic())
            self._recovered[role] = [down, 0]
            self._wake_loop()  # catch up now rather than at the next period

    def _announce_recoveries(self) -> None:
        """After a run that listed both endpoints: say which came back, after how long, and how
        many copies the catch-up took."""
        for role in list(self._recovered):
            if self._available[role] is not True:
                continue
            down, copies = self._recovered.pop(role)
            log.info(f"{role.capitalize()} snapstore available again after {down:.1f}s; "
                     f"{copies} snapshots copied to catch up",
                     extra={"endpoint": self._store(role).display, "down_seconds": round(down, 3),
                            "copies_caught_up": copies, "pending": len(self._pending)})

    def _update_counts(self) -> None:
        for role, keys in ((PRIMARY, self._on_primary), (SECONDARY, self._on_secondary)):
            if self._listed[role]:
                metrics.endpoint_snapshots.labels(endpoint=role).set(len(keys))

    # -- one run ------------------------------------------------------------------------------
    async def sync_once(self, *, delete_orphans: bool = True, dry_run: bool = False,
                        selection: Callable[[list[Snapshot]], list[Snapshot]] | None = None) -> SyncResult:
        """Compare both stores once, copy what is missing, delete orphans; never raises for store
        errors (they are in the result). ``dry_run`` plans and logs but changes nothing."""
        self._bind_loop()
        assert self._run_lock is not None
        async with self._run_lock:
            self._running = True
            try:
                return await self._run(delete_orphans=delete_orphans, dry_run=dry_run, selection=selection)
            finally:
                self._running = False

    async def _run(self, *, delete_orphans: bool, dry_run: bool, selection) -> SyncResult:
        t0 = time.monotonic()
        result = SyncResult(started=datetime.now(timezone.utc))
        self._copied_during_run = set()
        self._queued_at = {k: v for k, v in self._queued_at.items() if k in self._pending}
        try:
            listed = await self._list_both(result)
            if listed is None:
                return self._finish(result, t0, dry_run)
            primary_snaps, secondary_snaps = listed
            plan = plan_sync(
                primary_snaps, secondary_snaps,
                max_delete_fraction=self.config.max_delete_fraction,
                delete_orphans=delete_orphans,
                selection=selection(primary_snaps) if selection else None,
                protected_keys=set(self._copied_during_run) | set(self._inflight),
            )
            result.plan = plan
            result.planned_copies = len(plan.to_copy)
            result.planned_deletions = len(plan.to_delete)
            result.immutable = [s.snap_name for s in plan.immutable]
            result.deletion_skipped = plan.deletion_skipped
            self._on_secondary = ({s.copier_key() for s in secondary_snaps} - {s.copier_key() for s in plan.to_replace}
                                  | self._copied_during_run)
            # The primary: what it listed, plus what was uploaded (notified) since it was listed.
            self._on_primary |= {k for k, at in self._queued_at.items() if at >= t0}
            self._update_counts()
            # Pending: what this run must copy, plus what notify() queued after the primary was
            # listed (not in the listing yet). Anything else pending has been dealt with or deleted.
            missing = plan.missing_keys
            self._pending = {k: v for k, v in self._pending.items()
                             if k in missing or self._queued_at.get(k, -1.0) >= t0}
            self._pending.update({s.copier_key(): s for s in plan.to_copy})
            metrics.sync_pending.set(len(self._pending))
            metrics.endpoint_snapshot_difference.set(len(plan.to_copy))

            log.info(f"Found {len(plan.to_copy)} snapshots to copy and {len(plan.orphans)} to delete",
                     extra={"primary": self.primary.display, "secondary": self.secondary.display,
                            "dry_run": dry_run})
            if plan.deletion_skipped:
                log.error(f"Skipping deletion of orphaned snapshots on secondary: {plan.deletion_skipped}",
                          extra={"secondary": self.secondary.display, "orphans": len(plan.orphans)})
            if dry_run:
                return self._finish(result, t0, dry_run)
            if self.progress:
                self.progress("plan", None, len(plan.to_copy) + len(plan.to_delete))

            replace_map = {s.copier_key(): s for s in plan.to_replace}
            await asyncio.gather(*(self._copy_keyed(s, result, replace_map.get(s.copier_key()))
                                   for s in plan.to_copy))
            if result.copied and not (result.failed or result.cancelled):
                log.info(f"Successfully copied all {len(result.copied)} snapshots to secondary",
                         extra={"secondary": self.secondary.display, "bytes": result.bytes_copied})
            if self.stopping:  # draining or stopped: deletions wait for the next start
                return self._finish(result, t0, dry_run)
            await asyncio.gather(*(self._delete_one(s, result) for s in plan.to_delete))
            if result.immutable:
                # Once per run, not per object and not retried: retention ends on its own schedule.
                log.warning(f"Left {len(result.immutable)} orphaned snapshots on secondary: they are immutable",
                            extra={"secondary": self.secondary.display,
                                   "snapshots": ",".join(result.immutable[:10])})
            return self._finish(result, t0, dry_run)
        finally:
            self._copied_during_run = None

    async def _list_both(self, result: SyncResult) -> tuple[list[Snapshot], list[Snapshot]] | None:
        # Primary first (the document's order). Copies finished after this point are recorded in
        # _copied_during_run so that the secondary's listing does not mistake them for orphans.
        listings = {}
        for role, store, include_all in ((PRIMARY, self.primary, False), (SECONDARY, self.secondary, True)):
            try:
                snaps = await self._in_thread(store.list, include_all)
            except Exception as exc:
                self._endpoint_failed(role, exc)
                result.error = f"cannot list the {role} snapstore {store.display}: {_reason(exc)}"
                log.error("Sync run failed: could not list the " + role + " snapstore; nothing copied or deleted",
                          extra={"endpoint": store.display, "error": _reason(exc)})
                return None
            listings[role] = own_snapshots(snaps, store.prefix)
            if role == PRIMARY:  # counted even when the secondary's listing fails next
                self._on_primary = {s.copier_key() for s in listings[role]}
            self._listed[role] = True
            self._endpoint_ok(role)
            self._update_counts()
        return listings[PRIMARY], listings[SECONDARY]

    def _finish(self, result: SyncResult, t0: float, dry_run: bool) -> SyncResult:
        result.duration = time.monotonic() - t0
        if dry_run:
            return result
        self._runs += 1
        self._last_run = result
        metrics.sync_runs.labels(succeeded=metrics.label_bool(result.ok)).inc()
        metrics.sync_duration.observe(result.duration)
        if result.ok:
            self._last_success = time.time()
            metrics.sync_last_success.set(self._last_success)
        if result.plan is not None:
            metrics.endpoint_snapshot_difference.set(len(self._pending))
            self._announce_recoveries()
        metrics.sync_pending.set(len(self._pending))
        return result

    # -- copying ------------------------------------------------------------------------------
    async def _in_thread(self, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, fn, *args)

    async def _copy_keyed(self, src: Snapshot, result: SyncResult, replaces: Snapshot | None = None) -> None:
        """Copy ``src`` unless a copy of the same key is already running, in which case share its outcome."""
        key = src.copier_key()
        running = self._inflight.get(key)
        if running is None:
            running = asyncio.ensure_future(self._copy_with_retries(src, replaces))
            self._inflight[key] = running
            self._tasks.add(running)

            def done(fut, key=key):
                self._inflight.pop(key, None)
                self._tasks.discard(fut)

            running.add_done_callback(done)
        outcome, detail, size = await asyncio.shield(running)
        name = src.snap_name
        if outcome == "success":
            result.copied.append(name)
            result.bytes_copied += size
        elif outcome == "vanished":
            result.vanished.append(name)
        elif outcome == "cancelled":
            result.cancelled.append(name)
        else:
            result.failed[name] = detail

    async def _copy_with_retries(self, src: Snapshot, replaces: Snapshot | None) -> tuple[str, str, int]:
        assert self._slots is not None
        key, name = src.copier_key(), src.snap_name
        attempts = 1 + max(0, self.config.max_retries)
        last: BaseException | None = None
        for attempt in range(attempts):
            if self._stopping.is_set():
                return self._cancelled(src)
            async with self._slots:
                if self._stopping.is_set():
                    return self._cancelled(src)
                try:
                    if replaces is not None:
                        await self._in_thread(_on, SECONDARY, self._remove_differing, replaces)
                        replaces = None
                    size = await self._in_thread(self._copy_verified, src)
                except CopyCancelled:
                    return self._cancelled(src)
                except SourceGone:
                    self._pending.pop(key, None)
                    log.info("snapshot vanished from the primary before it was copied", extra={"snapshot": name})
                    metrics.sync_copies.labels(outcome="vanished").inc()
                    return "vanished", "", 0
                except Exception as exc:
                    if self._stopping.is_set():
                        return self._cancelled(src)
                    if isinstance(exc, EndpointFailure):
                        role, exc = exc.role, exc.cause
                        if _is_outage(exc):
                            # At the first failure, not after the retries: an outage shows at once.
                            self._endpoint_failed(role, exc)
                    last = exc
                else:
                    self._record_copy(src, size)
                    return "success", "", size
            if not _retryable(last) or attempt == attempts - 1:
                break
            delay = self.config.retry_backoff.total_seconds() * (2 ** attempt)
            log.debug("copy failed; retrying", extra={"snapshot": name, "error": _reason(last),
                                                     "attempt": attempt + 1, "delay": delay})
            if await self._sleep(delay):
                return self._cancelled(src)
        assert last is not None
        reason = _reason(last)
        outcome = "verification_failure" if isinstance(last, IntegrityError) else "failure"
        metrics.sync_copies.labels(outcome=outcome).inc()
        log.error(f"Failed to copy snapshot {name}: {reason}",
                  extra={"primary": self.primary.display, "secondary": self.secondary.display,
                         "attempts": attempt + 1})
        if self.progress:
            self.progress("failed", src, 0)
        return "failed", reason, 0

    async def _sleep(self, seconds: float) -> bool:
        """Wait unless stopping; True when the copier is stopping. A drain waits at most
        :data:`DRAIN_RETRY_WAIT`: its grace period is short."""
        assert self._stop_event is not None
        if self._draining:
            seconds = min(seconds, DRAIN_RETRY_WAIT)
        try:
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            return False
        return True

    def _cancelled(self, src: Snapshot) -> tuple[str, str, int]:
        metrics.sync_copies.labels(outcome="cancelled").inc()
        log.info("copy cancelled by shutdown; no partial object is left on the secondary",
                 extra={"snapshot": src.snap_name})
        return "cancelled", "", 0

    def _record_copy(self, src: Snapshot, size: int) -> None:
        key = src.copier_key()
        now = time.time()
        self._on_secondary.add(key)
        if self._copied_during_run is not None:
            self._copied_during_run.add(key)
        self._pending.pop(key, None)
        self._queued_at.pop(key, None)
        self._last_copy = now
        for role in (PRIMARY, SECONDARY):
            self._endpoint_ok(role)
        for counts in self._recovered.values():
            counts[1] += 1
        self._update_counts()
        metrics.sync_copies.labels(outcome="success").inc()
        metrics.sync_bytes.inc(size)
        metrics.sync_pending.set(len(self._pending))
        metrics.sync_lag_seconds.observe(max(0.0, now - src.created_on.timestamp()))
        if self.progress:
            self.progress("copied", src, size)

    def _remove_differing(self, snap: Snapshot) -> None:
        try:
            self.secondary.delete(snap)
        except ObjectNotFound:
            pass
        log.warning("replaced a secondary copy whose size differed from the primary's",
                    extra={"snapshot": snap.snap_name})

    def _copy_verified(self, src: Snapshot) -> int:
        """Copy one snapshot and verify it; returns its size. Runs in a worker thread."""
        dst = destination_for(src, self.secondary.prefix)
        expected: tuple[int, str] | None = None
        server_side = False
        if self.primary.service_identity == self.secondary.service_identity:
            try:
                server_side = self.secondary.copy_from(self.primary, src, dst)
            except ObjectNotFound as exc:  # only the source can be missing in a copy
                raise SourceGone(str(exc)) from exc
            except Exception as exc:  # the secondary's service performs the copy
                raise EndpointFailure(SECONDARY, exc) from exc
        if server_side and self.config.verify == "metadata":
            vouched = self._vouched_size(src, dst)
            if vouched is not None:
                log.debug("copied snapshot; the service reports the same size and digest for both objects",
                          extra={"snapshot": src.snap_name, "bytes": vouched, "server_side": True})
                return vouched
        if server_side:
            expected = _on(PRIMARY, lambda: _digest(self._fetch_source(src), self._stopping))
        else:
            hasher = hashlib.sha256()
            reader = HashingReader(_CancellableReader(self._fetch_source(src), self._stopping), hasher)
            with reader:
                _on(SECONDARY, self.secondary.save, dst, reader)
            expected = (reader.count, hasher.hexdigest())
        try:
            if src.size is not None and expected[0] != src.size:
                raise IntegrityError(f"read {expected[0]} bytes from the primary but its listing says {src.size}")
            actual = _on(SECONDARY, lambda: _digest(self.secondary.fetch(dst), self._stopping))
            if actual != expected:
                raise IntegrityError(
                    f"verification failed: secondary has {actual[0]} bytes sha256 {actual[1][:16]}…, "
                    f"primary has {expected[0]} bytes sha256 {expected[1][:16]}…")
        except IntegrityError:
            self._discard(dst)
            raise
        log.debug("copied and verified snapshot", extra={"snapshot": src.snap_name, "bytes": expected[0],
                                                         "server_side": server_side})
        return expected[0]

    def _vouched_size(self, src: Snapshot, dst: Snapshot) -> int | None:
        """``--backup-sync-verify=metadata``: the copy's size when the service reports the same
        size and content digest for source and copy (and the size is the listing's); None means
        verify by content."""
        try:
            theirs = _on(PRIMARY, self.primary.content_fingerprint, src)
            ours = _on(SECONDARY, self.secondary.content_fingerprint, dst)
        except ObjectNotFound:
            return None
        if theirs is None or ours is None:
            return None
        if theirs != ours or (src.size is not None and ours[0] != src.size):
            log.info("the service's size or digest of a copy differs from the primary's; verifying by content",
                     extra={"snapshot": src.snap_name, "primary": list(theirs), "secondary": list(ours)})
            return None
        return ours[0]

    def _fetch_source(self, src: Snapshot) -> BinaryIO:
        try:
            return self.primary.fetch(src)
        except ObjectNotFound as exc:
            raise SourceGone(str(exc)) from exc
        except Exception as exc:
            raise EndpointFailure(PRIMARY, exc) from exc

    def _discard(self, dst: Snapshot) -> None:
        try:
            self.secondary.delete(dst)
        except ObjectNotFound:
            pass
        except Exception as exc:
            log.error("could not delete a copy that failed verification", extra={"snapshot": dst.snap_name,
                                                                               "error": _reason(exc)})

    # -- deleting -----------------------------------------------------------------------------
    async def _delete_one(self, snap: Snapshot, result: SyncResult) -> None:
        assert self._slots is not None
        attempts = 1 + max(0, self.config.max_retries)
        last: BaseException | None = None
        for attempt in range(attempts):
            if self._stopping.is_set():
                return
            async with self._slots:
                try:
                    await self._in_thread(self.secondary.delete, snap)
                except ObjectNotFound:
                    last = None
                except ImmutableObject:
                    result.immutable.append(snap.snap_name)
                    metrics.sync_deletions.labels(outcome="immutable").inc()
                    return
                except Exception as exc:
                    last = exc
                    if _is_outage(exc):
                        self._endpoint_failed(SECONDARY, exc)
                else:
                    last = None
            if last is None:
                self._endpoint_ok(SECONDARY)
                self._on_secondary.discard(snap.copier_key())
                self._update_counts()
                result.deleted.append(snap.snap_name)
                metrics.sync_deletions.labels(outcome="success").inc()
                log.info("deleted orphaned snapshot from secondary", extra={"snapshot": snap.snap_name})
                if self.progress:
                    self.progress("deleted", snap, 0)
                return
            if not _retryable(last) or attempt == attempts - 1:
                break
            if await self._sleep(self.config.retry_backoff.total_seconds() * (2 ** attempt)):
                return
        assert last is not None
        result.delete_failed[snap.snap_name] = _reason(last)
        metrics.sync_deletions.labels(outcome="failure").inc()
        log.error(f"Failed to delete snapshot {snap.snap_name}: {_reason(last)}",
                  extra={"secondary": self.secondary.display})
        if self.progress:
            self.progress("failed", snap, 0)

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """What ``/sync/status`` serves. No keys, credentials or endpoints' secrets; errors redacted."""
        now = time.time()
        oldest = min((s.created_on.timestamp() for s in self._pending.values()), default=None)
        return {
            "enabled": True,
            "running": self._running,
            "stopping": self.stopping,
            "primary": self._endpoint_status(PRIMARY, self.primary),
            "secondary": self._endpoint_status(SECONDARY, self.secondary),
            "pending": len(self._pending),
            "inFlight": len(self._inflight),
            "lagSeconds": round(now - oldest, 3) if oldest is not None else 0.0,
            "lastSuccessfulSync": _iso(self._last_success),
            "secondsSinceLastSuccessfulSync": round(now - self._last_success, 3) if self._last_success else None,
            "lastVerifiedCopy": _iso(self._last_copy),
            "runs": self._runs,
            "periodSeconds": self.config.period.total_seconds(),
            "lastRun": self._last_run.to_json() if self._last_run else None,
        }

    def _endpoint_status(self, role: str, store: SnapStore) -> dict:
        keys = self._on_primary if role == PRIMARY else self._on_secondary
        return {"endpoint": store.display, "available": self._available[role],
                "snapshots": len(keys) if self._listed[role] else None}


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None
