"""The BackupCopier: event-driven copies, the periodic sync run, retries, and the drain.

The contract is the package's docstring. Planning is in ``plan``, moving and verifying one
snapshot in ``transfer``, endpoint availability in ``endpoints``, the bookkeeping of what is where
in ``inventory``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable

from .. import metrics
from ..config import SyncConfig
from ..errors import ImmutableObject, IntegrityError, ObjectNotFound
from ..retry import Policy, aretry_call, wait_unless_stopped
from ..snapshot import Snapshot
from ..snapstore import SnapStore
from .endpoints import EndpointStates
from .inventory import Inventory
from .plan import own_snapshots, plan_sync
from .result import ProgressFn, RunHistory, SyncResult
from .transfer import (
    PRIMARY,
    SECONDARY,
    CopyCancelled,
    EndpointFailure,
    SourceGone,
    VerifiedTransfer,
    failure_reason,
    is_outage,
    on_endpoint,
    retryable,
)

log = logging.getLogger("etcdbr.copier")

#: How often a drain looks again at what is left (it also wakes whenever a copy ends).
DRAIN_POLL = 0.5
#: Longest wait between retries of a copy while draining: the grace period is short.
DRAIN_RETRY_WAIT = 1.0


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
        self._inventory = Inventory()               # keys on each endpoint, snapshots pending a copy
        self._endpoints = EndpointStates(primary, secondary, on_recovery=self._wake_loop)
        self._transfer = VerifiedTransfer(primary, secondary, sync_config.verify, self._stopping)
        # Copies and deletions: --backup-sync-max-retries retries, --backup-sync-retry-backoff doubling.
        self._retry = Policy.from_flags(sync_config.max_retries, sync_config.retry_backoff.total_seconds())
        self._history = RunHistory()
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
        if self._endpoints.any_down:
            return min(period, max(self.config.retry_backoff.total_seconds(), 0.01))
        return period

    async def _periodic(self) -> None:
        assert self._wake is not None and self._stop_event is not None
        while not (self._draining or self._stopping.is_set()):
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a run must never end the loop
                log.error("sync run failed unexpectedly", extra={"error": failure_reason(exc)}, exc_info=True)
            if self._draining or self._stopping.is_set():
                return
            self._wake.clear()  # a recovery noticed during the run was caught up by that run
            await wait_unless_stopped(self._stop_event, self._next_wait(), wake=self._wake)
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
                     extra={"pending": len(self._inventory.pending), "in_flight": len(self._inflight)})

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
        left = self._inventory.left_behind()
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
            for key, snap in list(self._inventory.pending.items()):
                if key in tried or key in self._inflight or key in self._inventory.on_secondary:
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
        self._inventory.queued(snapshot)
        assert self._queue is not None
        self._queue.put_nowait(snapshot)

    async def _notified(self) -> None:
        assert self._queue is not None
        while not self._stopping.is_set():
            snapshot = await self._queue.get()
            key = snapshot.copier_key()
            if key in self._inventory.on_secondary:
                self._inventory.pending.pop(key, None)
                continue
            if self._endpoints.available[SECONDARY] is False and not self._draining:
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
        self._inventory.begin_run()
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
                protected_keys=self._inventory.protected_keys(self._inflight),
            )
            result.plan = plan
            result.planned_copies = len(plan.to_copy)
            result.planned_deletions = len(plan.to_delete)
            result.immutable = [s.snap_name for s in plan.immutable]
            result.deletion_skipped = plan.deletion_skipped
            self._inventory.planned(plan, secondary_snaps, run_started=t0)
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
            self._inventory.end_run()

    async def _list_both(self, result: SyncResult) -> tuple[list[Snapshot], list[Snapshot]] | None:
        # Primary first (the document's order). Copies finished after this point are recorded in
        # the inventory's copied_during_run so that the secondary's listing does not mistake them
        # for orphans.
        listings = {}
        for role, store, include_all in ((PRIMARY, self.primary, False), (SECONDARY, self.secondary, True)):
            try:
                snaps = await self._in_thread(store.list, include_all)
            except Exception as exc:  # noqa: BLE001 - whatever the cause, this run copies and deletes nothing
                self._endpoints.failed(role, exc)
                result.error = f"cannot list the {role} snapstore {store.display}: {failure_reason(exc)}"
                log.error("Sync run failed: could not list the " + role + " snapstore; nothing copied or deleted",
                          extra={"endpoint": store.display, "error": failure_reason(exc)})
                return None
            listings[role] = own_snapshots(snaps, store.prefix)
            self._inventory.listed_endpoint(role, listings[role])
            self._endpoints.ok(role)
        return listings[PRIMARY], listings[SECONDARY]

    def _finish(self, result: SyncResult, t0: float, dry_run: bool) -> SyncResult:
        result.duration = time.monotonic() - t0
        if dry_run:
            return result
        self._history.finished(result)
        pending = len(self._inventory.pending)
        if result.plan is not None:
            metrics.endpoint_snapshot_difference.set(pending)
            self._endpoints.announce_recoveries(pending=pending)
        metrics.sync_pending.set(pending)
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
        result.record(src.snap_name, *await asyncio.shield(running))

    def _retry_wait(self, retry: int) -> float:
        """The pause before a copy's or deletion's retry; a drain waits at most
        :data:`DRAIN_RETRY_WAIT`: its grace period is short."""
        pause = self._retry.wait(retry)
        return min(pause, DRAIN_RETRY_WAIT) if self._draining else pause

    async def _copy_with_retries(self, src: Snapshot, replaces: Snapshot | None) -> tuple[str, str, int]:
        slots = self._slots
        assert slots is not None
        key, name = src.copier_key(), src.snap_name
        tries = 0

        async def attempt() -> tuple[str, str, int]:
            nonlocal replaces, tries
            tries += 1
            if self._stopping.is_set():
                return self._cancelled(src)
            async with slots:
                if self._stopping.is_set():
                    return self._cancelled(src)
                try:
                    if replaces is not None:
                        await self._in_thread(on_endpoint, SECONDARY, self._transfer.remove_differing, replaces)
                        replaces = None
                    size = await self._in_thread(self._transfer.copy, src)
                except CopyCancelled:
                    return self._cancelled(src)
                except SourceGone:
                    self._inventory.pending.pop(key, None)
                    log.info("snapshot vanished from the primary before it was copied", extra={"snapshot": name})
                    metrics.sync_copies.labels(outcome="vanished").inc()
                    return "vanished", "", 0
                except Exception as exc:
                    if self._stopping.is_set():
                        return self._cancelled(src)
                    if not isinstance(exc, EndpointFailure):
                        raise
                    if is_outage(exc.cause):
                        # At the first failure, not after the retries: an outage shows at once.
                        self._endpoints.failed(exc.role, exc.cause)
                    raise exc.cause from None
                self._record_copy(src, size)
                return "success", "", size

        def retrying(attempt_number: int, exc: BaseException, pause: float) -> None:
            log.debug("copy failed; retrying", extra={"snapshot": name, "error": failure_reason(exc),
                                                     "attempt": attempt_number, "delay": pause})

        try:
            return await aretry_call(self._retry, attempt, retry_on=retryable, stop=self._stop_event,
                                     wait=self._retry_wait, on_retry=retrying,
                                     on_stop=lambda last: self._cancelled(src))
        except Exception as last:  # noqa: BLE001 - recorded and reported; the run goes on with the next copy
            text = failure_reason(last)
            outcome = "verification_failure" if isinstance(last, IntegrityError) else "failure"
            metrics.sync_copies.labels(outcome=outcome).inc()
            log.error(f"Failed to copy snapshot {name}: {text}",
                      extra={"primary": self.primary.display, "secondary": self.secondary.display,
                             "attempts": tries})
            if self.progress:
                self.progress("failed", src, 0)
            return "failed", text, 0

    def _cancelled(self, src: Snapshot) -> tuple[str, str, int]:
        metrics.sync_copies.labels(outcome="cancelled").inc()
        log.info("copy cancelled by shutdown; no partial object is left on the secondary",
                 extra={"snapshot": src.snap_name})
        return "cancelled", "", 0

    def _record_copy(self, src: Snapshot, size: int) -> None:
        now = time.time()
        self._inventory.copied(src.copier_key())
        self._history.last_copy = now
        self._endpoints.copied()
        metrics.sync_copies.labels(outcome="success").inc()
        metrics.sync_bytes.inc(size)
        metrics.sync_lag_seconds.observe(max(0.0, now - src.created_on.timestamp()))
        if self.progress:
            self.progress("copied", src, size)

    # -- deleting -----------------------------------------------------------------------------
    async def _delete_one(self, snap: Snapshot, result: SyncResult) -> None:
        slots = self._slots
        assert slots is not None

        async def attempt() -> bool:
            """True once the snapshot is gone; False when the copier stops or it is immutable."""
            if self._stopping.is_set():
                return False
            async with slots:
                try:
                    await self._in_thread(self.secondary.delete, snap)
                except ObjectNotFound:
                    pass
                except ImmutableObject:
                    result.immutable.append(snap.snap_name)
                    metrics.sync_deletions.labels(outcome="immutable").inc()
                    return False
                except Exception as exc:
                    if is_outage(exc):
                        self._endpoints.failed(SECONDARY, exc)
                    raise
            return True

        try:
            deleted = await aretry_call(self._retry, attempt, retry_on=retryable, stop=self._stop_event,
                                        wait=self._retry_wait, on_stop=lambda last: False)
        except Exception as last:  # noqa: BLE001 - recorded and reported; the run goes on with the next deletion
            result.delete_failed[snap.snap_name] = failure_reason(last)
            metrics.sync_deletions.labels(outcome="failure").inc()
            log.error(f"Failed to delete snapshot {snap.snap_name}: {failure_reason(last)}",
                      extra={"secondary": self.secondary.display})
            if self.progress:
                self.progress("failed", snap, 0)
            return
        if not deleted:
            return
        self._endpoints.ok(SECONDARY)
        self._inventory.deleted(snap.copier_key())
        result.deleted.append(snap.snap_name)
        metrics.sync_deletions.labels(outcome="success").inc()
        log.info("deleted orphaned snapshot from secondary", extra={"snapshot": snap.snap_name})
        if self.progress:
            self.progress("deleted", snap, 0)

    # -- status -------------------------------------------------------------------------------
    def status(self) -> dict:
        """What ``/sync/status`` serves. No keys, credentials or endpoints' secrets; errors redacted."""
        now = time.time()
        pending = self._inventory.pending
        oldest = min((s.created_on.timestamp() for s in pending.values()), default=None)
        return {
            "enabled": True,
            "running": self._running,
            "stopping": self.stopping,
            "primary": self._endpoints.status(PRIMARY, self._inventory.snapshots(PRIMARY)),
            "secondary": self._endpoints.status(SECONDARY, self._inventory.snapshots(SECONDARY)),
            "pending": len(pending),
            "inFlight": len(self._inflight),
            "lagSeconds": round(now - oldest, 3) if oldest is not None else 0.0,
            **self._history.status(now, period=self.config.period.total_seconds()),
        }


