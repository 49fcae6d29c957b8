"""The Snapshotter: the startup decision, then cron full snapshots and periodic deltas.

The promises it keeps are the package's docstring. The rules of when are in ``schedule``, the
watch and its event buffer in ``collector``, the full snapshot's stream in ``fullsnapshot``.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from .. import metrics
from ..compression import compressing_reader, suffix_for
from ..config import Config
from ..errors import EtcdbrError
from ..etcd import client as etcdclient
from ..retry import any_failure, aretry_call, wait_unless_stopped
from ..snapshot import Kind, Snapshot, latest_chain, new_snapshot
from . import fullsnapshot
from .collector import DeltaCollector
from .listeners import Listeners
from .schedule import backoff_policy, full_snapshot_required_at_startup, next_run

log = logging.getLogger("etcdbr.snapshotter")

FULL, INCR = Kind.FULL.value, Kind.INCR.value
# Sealed deltas waiting for a store that keeps failing: past this many times the memory limit a
# full snapshot replaces them rather than letting memory grow.
PENDING_LIMIT_FACTOR = 4
# How long the startup delta waits for the watch to catch up with etcd's current revision.
CATCH_UP_TIMEOUT = 60.0


def _kind(snap: Snapshot) -> str:
    return FULL if snap.is_full else INCR


class Snapshotter:
    """Takes full and delta snapshots of one etcd member into one store.

    ``client_factory()`` returns an :class:`etcd.client.EtcdClient` (or an awaitable of one); by default
    ``etcdclient.connect(config.etcd)``. ``clock()`` returns unix seconds.
    """

    def __init__(self, store, config: Config, client_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.config = config
        self.sconfig = config.snapshotter
        self._client_factory = client_factory or (lambda: etcdclient.connect(config.etcd))
        self._clock = clock
        self._etcd = etcdclient.SharedClient(self._client_factory)
        self._bound_loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._listeners = Listeners()
        self.compression = self.sconfig.compression
        self.compression_suffix = suffix_for(self.compression)
        self.memory_limit = self.sconfig.delta_snapshot_memory_limit or 10 * 1024 * 1024
        # state
        self._prev: Snapshot | None = None
        self._prev_full: Snapshot | None = None
        self._deltas: list[Snapshot] = []
        self._loaded = False
        self._collector = DeltaCollector(clock)
        self._watching = False                     # the loop wants the watch to run
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._full_required_reason = ""
        self._last_full_failed = False
        self._full_creds_generation: int | None = None  # credentials generation of the last full
        self.active = False
        #: True once the startup snapshot (full or catch-up delta) is done and the loop runs (health)
        self.ready = False
        #: whether the last full snapshot's revision was fenced exactly (None before the first)
        self.last_full_exact: bool | None = None

    def _bind_loop(self) -> None:
        """asyncio primitives and gRPC channels belong to one event loop; a new loop (a test's
        second ``asyncio.run``) gets fresh ones."""
        loop = asyncio.get_running_loop()
        if self._bound_loop is loop:
            return
        first, self._bound_loop = self._bound_loop is None, loop
        if first:
            return
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._progress = asyncio.Event()
        self._etcd.forget()
        self._collector.forget_watch()

    @property
    def _backoff(self):
        """The ``--backoff-*`` flags: startup's retries, and the loop's pauses after failures."""
        return backoff_policy(self.sconfig)

    # -- public API ------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[Snapshot], Any]) -> None:
        """``fn(snapshot)`` is called after each successful upload; it must not block for long."""
        self._listeners.add(fn)

    def latest(self) -> tuple[Snapshot | None, list[Snapshot]]:
        return self._prev_full, list(self._deltas)

    @property
    def collected_revision(self) -> int | None:
        """The last revision snapshotted or buffered (the watch resumes after it)."""
        return self._collector.collected_revision

    @property
    def buffered_events(self) -> int:
        return self._collector.buffered_events

    async def close(self) -> None:
        await self._stop_watch()
        await self._listeners.wait(timeout=5)
        await self._etcd.reset()

    async def take_full_snapshot(self, final: bool = False) -> Snapshot:
        """Take a full snapshot now (``final``: the one taken on shutdown, named ``.final``).

        A final snapshot is not taken again when the previous snapshot is a final full one at
        the current revision; that one is returned instead.
        """
        self._bind_loop()
        async with self._lock:
            await self._ensure_loaded()
            client = await self._etcd.get()
            prev = self._prev
            if final and prev is not None and prev.is_full and prev.is_final:
                revision = (await etcdclient.status(client)).revision
                if revision == prev.last_revision:
                    log.info("previous snapshot is a final full snapshot at the current revision; not taking another",
                             extra={"snapshot": prev.snap_name})
                    return prev
            was_watching = self._watching
            await self._stop_watch()
            started = time.monotonic()
            try:
                generation = await asyncio.to_thread(lambda: self.store.credentials_generation)
                snap, exact, etcd_bytes, stored = await self._upload_full(client, final)
            except BaseException as exc:
                self._last_full_failed = True
                metrics.snapshot_required.labels(FULL).set(1)
                if not isinstance(exc, asyncio.CancelledError):
                    self._record_failure(FULL, exc, started)
                    if etcdclient.needs_reconnect(exc):
                        await self._etcd.reset()
                if was_watching:
                    self._start_watch()  # the buffer is intact; keep collecting from where it was
                raise
            self._last_full_failed = False
            self._full_creds_generation = generation
            self.last_full_exact = exact
            self._full_required_reason = ""
            self._prev = self._prev_full = snap
            self._deltas = []
            self._collector.discard(next_rev=snap.last_revision + 1)
            metrics.snapshot_duration.labels(FULL, "true").observe(time.monotonic() - started)
            metrics.snapshot_required.labels(FULL).set(0)
            metrics.snapshot_required.labels(INCR).set(0)
            self._record_success(snap)
            log.info("full snapshot uploaded", extra={
                "snapshot": snap.snap_name, "store": self.store.display, "revision": snap.last_revision,
                "exact_revision": exact, "etcd_bytes": etcd_bytes, "stored_bytes": stored,
                "seconds": round(time.monotonic() - started, 3)})
            if was_watching:
                self._start_watch()
            self._listeners.notify(snap)
            return snap

    async def take_delta_snapshot(self, final: bool = False) -> Snapshot | None:
        """Upload the events collected since the previous snapshot; None when there are none.

        ``final``: the last delta of this process (shutdown), named with the ``.final`` suffix.
        """
        self._bind_loop()
        async with self._lock:
            if not self.sconfig.delta_enabled and not self._collector.watching:
                return await self._on_demand_delta(final)
            return await self._flush_deltas(final)

    async def _on_demand_delta(self, final: bool) -> Snapshot | None:
        """A delta asked for (``/snapshot/delta``) while scheduled deltas are off, so no watch
        runs: watch from the latest snapshot to etcd's current revision, upload that, stop the
        watch. (The Go tool answers 500 here, upstream issue #965.)"""
        await self._ensure_loaded()
        prev = self._prev
        if prev is None:
            return None  # no full snapshot to continue yet
        client = await self._etcd.get()
        revision = await etcdclient.current_revision(client)
        if revision < prev.last_revision:
            self._require_full("etcd's revision is behind the latest snapshot")
            raise EtcdbrError(f"etcd's revision {revision} is behind the latest snapshot {prev.snap_name}; "
                              "a full snapshot follows instead")
        if revision == prev.last_revision:
            return None  # nothing happened since the latest snapshot
        self._collector.discard(next_rev=prev.last_revision + 1)
        self._start_watch()
        try:
            deadline = time.monotonic() + CATCH_UP_TIMEOUT
            while (self._collector.collected_revision or 0) < revision and not self._full_required_reason:
                self._progress.clear()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise EtcdbrError(f"the watch did not reach etcd's revision {revision} within "
                                      f"{CATCH_UP_TIMEOUT:.0f}s (collected up to {self._collector.collected_revision})")
                await wait_unless_stopped(self._progress, remaining)
            if self._full_required_reason:
                raise EtcdbrError(f"cannot take a delta snapshot ({self._full_required_reason}); "
                                  "a full snapshot follows instead")
            await self._collector.stop_watch()  # seal exactly what was collected
            return await self._flush_deltas(final)
        finally:
            await self._stop_watch()
            self._watching = False
            self._collector.discard()

    async def run(self, stop: asyncio.Event, full_at_start: bool | None = None, flush_on_stop: bool = True) -> None:
        """Snapshot until ``stop`` is set: the startup decision, then cron fulls and periodic deltas.

        ``full_at_start``: True always starts with a full snapshot (the ``snapshot`` command),
        None decides as the Go server does. On stop, buffered events are uploaded as one last
        delta (``flush_on_stop``). Raises after the startup snapshot failed every backoff attempt.
        """
        self._bind_loop()
        self.active = True
        # Another process may have written snapshots since this one last ran (a previous backup
        # leader): start from what the store says, not from memory.
        self._loaded = False
        self._collector.discard()
        self._full_required_reason = ""
        try:
            if self._full_creds_generation is None:  # rotations from now on call for a full snapshot
                self._full_creds_generation = await asyncio.to_thread(lambda: self.store.credentials_generation)
            await self._startup(stop, full_at_start)
            self.ready = True
            await self._loop(stop)
            if stop.is_set() and flush_on_stop and self.sconfig.delta_enabled and self.buffered_events:
                try:
                    snap = await self.take_delta_snapshot(final=True)
                    if snap is not None:
                        log.info("uploaded the events buffered at shutdown", extra={"snapshot": snap.snap_name})
                except EtcdbrError as exc:
                    log.error("could not upload the events buffered at shutdown", extra={"error": str(exc)})
        finally:
            self.active = self.ready = False
            self._watching = False
            await self._stop_watch()

    # -- startup and loop ------------------------------------------------------------------
    async def _startup(self, stop: asyncio.Event, full_at_start: bool | None) -> None:
        await self._retrying(stop, self._ensure_loaded, "read the store")
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        if full_at_start is None:
            full_at_start = full_snapshot_required_at_startup(
                self._prev_full, self.sconfig.schedule, now, self._last_full_failed)
        if not full_at_start and not self.sconfig.delta_enabled:
            log.info("latest full snapshot is recent and delta snapshots are disabled; waiting for the schedule",
                     extra={"snapshot": self._prev_full.snap_name if self._prev_full else ""})
            return
        if not full_at_start:
            done = await self._retrying(stop, self._startup_delta, "catch up with a delta snapshot")
            if done or stop.is_set():
                return
            full_at_start = True
        if full_at_start:
            log.info("taking a full snapshot at startup", extra={"store": self.store.display})
            self._watching = self.sconfig.delta_enabled
            await self._retrying(stop, self.take_full_snapshot, "take the startup full snapshot")

    async def _startup_delta(self) -> bool:
        """Collect what happened since the latest snapshot and upload it as one delta.
        Returns False when a full snapshot is needed instead."""
        client = await self._etcd.get()
        prev = self._prev
        assert prev is not None
        revision = await etcdclient.current_revision(client)
        if revision < prev.last_revision:
            log.warning("etcd's revision is behind the latest snapshot (etcd was replaced or restored); "
                        "taking a full snapshot", extra={"etcd_revision": revision, "snapshot": prev.snap_name})
            return False
        self._watching = True
        self._start_watch()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT
        assert self._collector.next_rev is not None  # set by _ensure_loaded from the previous snapshot
        while self._collector.next_rev <= revision and not self._full_required_reason:
            self._progress.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("watch did not catch up with etcd in time; uploading what it collected",
                            extra={"collected_to": self._collector.collected_revision, "etcd_revision": revision})
                break
            await wait_unless_stopped(self._progress, remaining)
        if self._full_required_reason:
            return False
        snap = await self.take_delta_snapshot()
        log.info("startup: latest full snapshot is recent; continued its chain with a delta",
                 extra={"full": self._prev_full.snap_name if self._prev_full else "",
                        "delta": snap.snap_name if snap else "none (no changes)"})
        return True

    async def _retrying(self, stop: asyncio.Event, fn: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``fn()`` with the ``--backoff-*`` retries, whatever fails; None once ``stop`` is set
        (asked to stop is not a failure)."""
        async def attempt() -> Any:
            if stop.is_set():
                return None
            try:
                return await fn()
            except Exception as exc:
                if etcdclient.needs_reconnect(exc):
                    await self._etcd.reset()
                if stop.is_set():
                    return None
                raise

        def retrying(attempt_number: int, exc: BaseException, pause: float) -> None:
            log.warning(f"could not {what}; retrying", extra={
                "error": str(exc), "attempt": attempt_number, "retry_in_seconds": pause})

        return await aretry_call(self._backoff, attempt, retry_on=any_failure, stop=stop, on_retry=retrying,
                                 on_stop=lambda last: None)

    async def _loop(self, stop: asyncio.Event) -> None:
        """Full and delta snapshots when due. A failed one is due again after the ``--backoff-*``
        pause for its count of failures in a row (a schedule: "not before" times, never a wait
        that holds up the other kind)."""
        period = self.sconfig.delta_snapshot_period.total_seconds()
        delta_enabled = self.sconfig.delta_enabled
        if delta_enabled and not self._watching:
            self._watching = True
            self._start_watch()
        next_full = self._next_full_time()
        next_delta = self._clock() + period
        full_failures = delta_failures = 0
        full_retry_at = delta_retry_at = 0.0  # after a failure, nothing of that kind before this

        def full_due(now: float) -> bool:
            return now >= full_retry_at and (now >= next_full or bool(self._full_required_reason))

        def delta_due(now: float) -> bool:
            return delta_enabled and now >= delta_retry_at and (
                now >= next_delta or self._collector.size >= self.memory_limit)

        while not stop.is_set():
            now = self._clock()
            if full_due(now):
                log.info("taking a full snapshot", extra={"reason": self._full_required_reason or "schedule"})
                try:
                    await self.take_full_snapshot()
                    full_failures, full_retry_at = 0, 0.0
                    next_full = self._next_full_time()
                    next_delta = self._clock() + period
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
                    delay = self._backoff.wait(full_failures)
                    full_failures += 1
                    self._full_required_reason = self._full_required_reason or "previous full snapshot failed"
                    log.warning("will retry the full snapshot", extra={"error": str(exc), "retry_in_seconds": delay})
                    full_retry_at = self._clock() + delay
                continue
            if delta_due(now):
                if await self._credentials_rotated():
                    continue
                try:
                    await self.take_delta_snapshot()
                    delta_failures, delta_retry_at = 0, 0.0
                except Exception as exc:  # noqa: BLE001 - the loop outlives any one failure
                    delay = self._backoff.wait(delta_failures)
                    delta_failures += 1
                    delta_retry_at = self._clock() + delay
                    log.warning("will retry the delta snapshot; its events are kept", extra={
                        "error": str(exc), "retry_in_seconds": delay})
                    if self._collector.pending_bytes > PENDING_LIMIT_FACTOR * self.memory_limit:
                        self._require_full("delta snapshots keep failing")
                next_delta = self._clock() + period
                continue
            self._wakeup.clear()
            now = self._clock()
            if full_due(now) or delta_due(now):
                continue  # something became due while the flag was being cleared
            deadlines = [full_retry_at if self._full_required_reason else max(next_full, full_retry_at)]
            if delta_enabled:
                deadlines.append(max(next_delta, delta_retry_at) if self._collector.size < self.memory_limit
                                 else delta_retry_at)
            await wait_unless_stopped(stop, max(0.0, min(deadlines) - now), wake=self._wakeup)

    def _next_full_time(self) -> float:
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        return next_run(self.sconfig.schedule, now).timestamp()

    async def _credentials_rotated(self) -> bool:
        """Require a full snapshot when the store's credentials were rotated since the last full
        one (checked before each delta, as the Go tool does)."""
        if self._full_creds_generation is None:
            return False
        try:
            generation = await asyncio.to_thread(lambda: self.store.credentials_generation)
        except Exception:  # noqa: BLE001 - the delta's own store calls will report it
            return False
        if generation == self._full_creds_generation:
            return False
        self._require_full("snapstore credentials changed")
        return True

    def _require_full(self, reason: str) -> None:
        if not self._full_required_reason:
            self._full_required_reason = reason
        metrics.snapshot_required.labels(FULL).set(1)
        self._wakeup.set()
        self._progress.set()

    # -- full snapshots ----------------------------------------------------------------------
    async def _upload_full(self, client, final: bool) -> tuple[Snapshot, bool, int, int]:
        timeout = self.config.etcd.snapshot_timeout.total_seconds()
        fenced = await fullsnapshot.open_fenced_snapshot(client, timeout)
        snap = new_snapshot(Kind.FULL, 0, fenced.revision, prefix=self.store.prefix,
                            compression_suffix=self.compression_suffix, is_final=final,
                            created_on=datetime.fromtimestamp(self._clock(), tz=timezone.utc))
        policy = self.compression
        etcd_bytes, stored = await fullsnapshot.upload_stream(
            fenced,
            save=lambda stream: self.store.save(snap, stream),
            wrap=lambda raw: compressing_reader(raw, policy),
        )
        return snap, fenced.exact, etcd_bytes, stored

    # -- delta snapshots ---------------------------------------------------------------------
    async def _flush_deltas(self, final: bool = False) -> Snapshot | None:
        await self._ensure_loaded()
        if self._prev is None:
            return None
        self._collector.seal(self._prev.last_revision)
        metrics.snapshot_required.labels(INCR).set(0)
        uploaded = None
        while self._collector.pending:
            sealed = self._collector.pending[0]
            started = time.monotonic()
            snap = new_snapshot(Kind.INCR, sealed.start, sealed.last, prefix=self.store.prefix,
                                compression_suffix=self.compression_suffix,
                                is_final=final and len(self._collector.pending) == 1,
                                created_on=datetime.fromtimestamp(self._clock(), tz=timezone.utc))
            try:
                stored = await asyncio.to_thread(self._save_delta, snap, sealed.payload)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self._record_failure(INCR, exc, started)
                metrics.snapshot_required.labels(INCR).set(1)
                raise
            self._collector.pending.pop(0)
            self._prev = snap
            self._deltas.append(snap)
            metrics.snapshot_duration.labels(INCR, "true").observe(time.monotonic() - started)
            self._record_success(snap)
            log.info("delta snapshot uploaded", extra={
                "snapshot": snap.snap_name, "store": self.store.display, "events": sealed.events,
                "bytes": len(sealed.payload), "stored_bytes": stored})
            self._listeners.notify(snap)
            uploaded = snap
        if self._collector.encoder.count:
            metrics.snapshot_required.labels(INCR).set(1)
        return uploaded

    def _save_delta(self, snap: Snapshot, payload: bytes) -> int:
        return self.store.save(snap, compressing_reader(io.BytesIO(payload), self.compression))

    # -- watch -------------------------------------------------------------------------------
    def _start_watch(self) -> None:
        if self._collector.start_watch(self._etcd.get, self._etcd.reset, self._on_watch_response,
                                       on_compacted=lambda: self._require_full("watch start revision compacted")):
            self._watching = True

    async def _stop_watch(self) -> None:
        await self._collector.stop_watch()

    def _on_watch_response(self, response) -> None:
        """Buffer one watch response (the watch task's hand-over). Synchronous on purpose: a delta
        is sealed between two responses, never inside one, so a revision is never split between deltas."""
        added, skipped = self._collector.add(response)
        if skipped:
            self._require_full("watch skipped revisions")
        if added:
            metrics.snapshot_required.labels(INCR).set(1)
        self._progress.set()
        if self._collector.size >= self.memory_limit:
            self._wakeup.set()

    # -- helpers -----------------------------------------------------------------------------
    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        snaps = await asyncio.to_thread(self.store.list)
        full, deltas = latest_chain(snaps)
        self._prev_full, self._deltas = full, list(deltas)
        self._prev = deltas[-1] if deltas else full
        if self._prev is not None:
            self._collector.next_rev = self._prev.last_revision + 1
            metrics.snapshot_latest_revision.labels(_kind(self._prev)).set(self._prev.last_revision)
        self._update_chain_metrics()
        self._loaded = True

    def _update_chain_metrics(self) -> None:
        metrics.snapstore_latest_deltas_total.set(len(self._deltas))
        if self._prev_full is not None and self._deltas:
            metrics.snapstore_latest_deltas_revisions_total.set(
                self._deltas[-1].last_revision - self._prev_full.last_revision)
        else:
            metrics.snapstore_latest_deltas_revisions_total.set(0)

    def _record_success(self, snap: Snapshot) -> None:
        kind = _kind(snap)
        metrics.snapshot_latest_revision.labels(kind).set(snap.last_revision)
        metrics.snapshot_latest_timestamp.labels(kind).set(snap.created_unix)
        self._update_chain_metrics()

    def _record_failure(self, kind: str, exc: BaseException, started: float) -> None:
        metrics.snapshot_duration.labels(kind, "false").observe(time.monotonic() - started)
        metrics.snapshotter_failure.labels(_error_label(exc)).inc()
        log.error(f"{'full' if kind == FULL else 'delta'} snapshot failed",
                  extra={"store": self.store.display, "error": str(exc)})


def _error_label(exc: BaseException) -> str:
    """A bounded label for snapshotter_failure: the error class (as GC does), never a message."""
    return type(exc).__name__

