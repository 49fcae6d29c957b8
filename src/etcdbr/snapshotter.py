"""The snapshotter: full snapshots on a cron schedule, delta snapshots from a watch in between.

Promises (what restore and the copier rely on):

* Every delta starts at the previous snapshot's last revision + 1 and ends at the mod revision of
  its last event; the events it holds are exactly that range, each revision whole (deltas are cut
  only between watch responses, and etcd never splits a revision across responses).
* A full snapshot is named after the revision it holds (see ``fullsnapshot.open_fenced_snapshot``
  for how that is known, and the one case where it is a lower bound).
* Events that arrive while a delta uploads go into a fresh buffer; a failed delta upload keeps its
  payload and is retried first next time, so nothing is lost while the process lives.
* A watch that breaks (etcd restart, leader change) resumes at the revision after the last one
  buffered; a watch that cannot resume (history compacted) leads to a full snapshot.
* Listeners (the copier) hear of each snapshot after its upload succeeded.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from croniter import croniter

from . import fullsnapshot, metrics
from .config import Config
from .errors import EtcdbrError
from .etcd import client as etcdclient
from .snapshot import Kind, Snapshot, latest_chain, new_snapshot

log = logging.getLogger(__name__)

FULL, INCR = Kind.FULL.value, Kind.INCR.value
WATCH_RETRY_MIN = 0.2
WATCH_RETRY_MAX = 5.0
# Sealed deltas waiting for a store that keeps failing: past this many times the memory limit a
# full snapshot replaces them rather than letting memory grow.
PENDING_LIMIT_FACTOR = 4
# How long the startup delta waits for the watch to catch up with etcd's current revision.
CATCH_UP_TIMEOUT = 60.0


# -- schedule rules (pure) ------------------------------------------------------------------------
def full_snapshot_time_window(schedule: str) -> float:
    """Hours a full snapshot may be old before startup takes a new one (the Go tool's rule):
    a week for weekly schedules, N for ``*/N`` hourly ones, else a day."""
    fields = schedule.split()
    if len(fields) != 5:
        return 24.0
    _minute, hour, dom, _month, dow = fields
    if dow != "*":
        return 24.0 * 7
    if dom == "*" and hour.startswith("*/"):
        try:
            return float(int(hour[2:]))
        except ValueError:
            return 24.0
    return 24.0


def _next_run(schedule: str, after: datetime) -> datetime:
    # Cron is read in local time, as the Go tool's cron library does.
    return croniter(schedule, after.astimezone()).get_next(datetime)


def full_snapshot_required_at_startup(prev_full: Snapshot | None, schedule: str, now: datetime,
                                      last_full_failed: bool = False) -> bool:
    """Whether startup takes a full snapshot rather than a delta.

    Yes without a previous full, after a final one, after a failed one, when the previous one is
    older than the time window, or when a scheduled full was missed and waiting for the next
    scheduled one would let the latest full grow older than the window.
    """
    if prev_full is None or prev_full.is_final or last_full_failed:
        return True
    window = full_snapshot_time_window(schedule)
    age_hours = (now - prev_full.created_on).total_seconds() / 3600
    if age_hours > window:
        return True
    if _next_run(schedule, prev_full.created_on) > now:
        return False
    wait_hours = (_next_run(schedule, now) - now).total_seconds() / 3600
    return age_hours + wait_hours > window


def backoff_delay(attempt: int, multiplier: float, threshold: float) -> float:
    """Seconds before retry ``attempt`` (0-based): 1, m, m^2 ... capped at ``threshold``."""
    return min(threshold, float(multiplier) ** attempt)


@dataclass
class _SealedDelta:
    start: int
    last: int
    payload: bytes
    events: int


def _kind(snap: Snapshot) -> str:
    return FULL if snap.is_full else INCR


class Snapshotter:
    """Takes full and delta snapshots of one etcd member into one store.

    ``client_factory()`` returns an :class:`etcd.client.EtcdClient` (or an awaitable of one); by default
    ``etcdclient.connect(config.etcd)``. ``clock()`` returns unix seconds.
    """

    def __init__(self, store, config: Config, client_factory: Callable[[], Any] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from .compression import suffix_for

        self.store = store
        self.config = config
        self.sconfig = config.snapshotter
        self._client_factory = client_factory or (lambda: etcdclient.connect(config.etcd))
        self._clock = clock
        self._client = None
        self._bound_loop: asyncio.AbstractEventLoop | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[Snapshot], Any]] = []
        self._listener_tasks: set[asyncio.Task] = set()
        self.compression = self.sconfig.compression
        self.compression_suffix = suffix_for(self.compression)
        self.memory_limit = self.sconfig.delta_snapshot_memory_limit or 10 * 1024 * 1024
        # state
        self._prev: Snapshot | None = None
        self._prev_full: Snapshot | None = None
        self._deltas: list[Snapshot] = []
        self._loaded = False
        self._encoder = self._new_encoder()
        self._pending: list[_SealedDelta] = []
        self._next_rev: int | None = None
        self._watch_task: asyncio.Task | None = None
        self._watching = False
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
        self._client = None
        self._watch_task = None

    # -- public API ------------------------------------------------------------------------
    def add_listener(self, fn: Callable[[Snapshot], Any]) -> None:
        """``fn(snapshot)`` is called after each successful upload; it must not block for long."""
        self._listeners.append(fn)

    def latest(self) -> tuple[Snapshot | None, list[Snapshot]]:
        return self._prev_full, list(self._deltas)

    @property
    def collected_revision(self) -> int | None:
        """The last revision snapshotted or buffered (the watch resumes after it)."""
        return None if self._next_rev is None else self._next_rev - 1

    @property
    def buffered_events(self) -> int:
        return self._encoder.count + sum(p.events for p in self._pending)

    async def close(self) -> None:
        await self._stop_watch()
        if self._listener_tasks:
            await asyncio.wait(list(self._listener_tasks), timeout=5)
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def take_full_snapshot(self, final: bool = False) -> Snapshot:
        """Take a full snapshot now (``final``: the one taken on shutdown, named ``.final``).

        A final snapshot is not taken again when the previous snapshot is a final full one at
        the current revision; that one is returned instead.
        """
        self._bind_loop()
        async with self._lock:
            await self._ensure_loaded()
            client = await self._get_client()
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
                        await self._reset_client()
                if was_watching:
                    self._start_watch()  # the buffer is intact; keep collecting from where it was
                raise
            self._last_full_failed = False
            self._full_creds_generation = generation
            self.last_full_exact = exact
            self._full_required_reason = ""
            self._prev = self._prev_full = snap
            self._deltas = []
            self._pending = []
            self._encoder = self._new_encoder()
            self._next_rev = snap.last_revision + 1
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
            self._notify(snap)
            return snap

    async def take_delta_snapshot(self, final: bool = False) -> Snapshot | None:
        """Upload the events collected since the previous snapshot; None when there are none.

        ``final``: the last delta of this process (shutdown), named with the ``.final`` suffix.
        """
        self._bind_loop()
        async with self._lock:
            return await self._flush_deltas(final)

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
        self._encoder = self._new_encoder()
        self._pending = []
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
        client = await self._get_client()
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
        while self._next_rev <= revision and not self._full_required_reason:
            self._progress.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                log.warning("watch did not catch up with etcd in time; uploading what it collected",
                            extra={"collected_to": self._next_rev - 1, "etcd_revision": revision})
                break
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except asyncio.TimeoutError:
                pass
        if self._full_required_reason:
            return False
        snap = await self.take_delta_snapshot()
        log.info("startup: latest full snapshot is recent; continued its chain with a delta",
                 extra={"full": self._prev_full.snap_name if self._prev_full else "",
                        "delta": snap.snap_name if snap else "none (no changes)"})
        return True

    async def _retrying(self, stop: asyncio.Event, fn: Callable[[], Awaitable[Any]], what: str) -> Any:
        attempts = max(1, self.sconfig.backoff_attempt_limit)
        threshold = self.sconfig.backoff_threshold_time.total_seconds()
        for attempt in range(attempts):
            if stop.is_set():
                return None  # asked to stop: not a failure
            try:
                return await fn()
            except Exception as exc:  # noqa: BLE001 - whatever failed, startup retries it
                if etcdclient.needs_reconnect(exc):
                    await self._reset_client()
                if stop.is_set():
                    return None
                if attempt + 1 >= attempts:
                    raise
                delay = backoff_delay(attempt, self.sconfig.backoff_multiplier, threshold)
                log.warning(f"could not {what}; retrying", extra={
                    "error": str(exc), "attempt": attempt + 1, "retry_in_seconds": delay})
                if await _wait_event(stop, delay):
                    return None
        return None  # pragma: no cover

    async def _loop(self, stop: asyncio.Event) -> None:
        period = self.sconfig.delta_snapshot_period.total_seconds()
        multiplier = self.sconfig.backoff_multiplier
        threshold = self.sconfig.backoff_threshold_time.total_seconds()
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
                now >= next_delta or self._encoder.size >= self.memory_limit)

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
                    delay = backoff_delay(full_failures, multiplier, threshold)
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
                except Exception as exc:  # noqa: BLE001
                    delay = backoff_delay(delta_failures, multiplier, threshold)
                    delta_failures += 1
                    delta_retry_at = self._clock() + delay
                    log.warning("will retry the delta snapshot; its events are kept", extra={
                        "error": str(exc), "retry_in_seconds": delay})
                    if sum(len(p.payload) for p in self._pending) > PENDING_LIMIT_FACTOR * self.memory_limit:
                        self._require_full("delta snapshots keep failing")
                next_delta = self._clock() + period
                continue
            self._wakeup.clear()
            now = self._clock()
            if full_due(now) or delta_due(now):
                continue  # something became due while the flag was being cleared
            deadlines = [full_retry_at if self._full_required_reason else max(next_full, full_retry_at)]
            if delta_enabled:
                deadlines.append(max(next_delta, delta_retry_at) if self._encoder.size < self.memory_limit
                                 else delta_retry_at)
            await _wait_any(stop, self._wakeup, max(0.0, min(deadlines) - now))

    def _next_full_time(self) -> float:
        now = datetime.fromtimestamp(self._clock(), tz=timezone.utc)
        return _next_run(self.sconfig.schedule, now).timestamp()

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
        from .compression import compressing_reader

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
    def _seal(self) -> None:
        """Move the buffered events into a sealed delta; new events go into a fresh buffer."""
        encoder = self._encoder
        if not encoder.count:
            return
        self._encoder = self._new_encoder()
        start = self._pending[-1].last + 1 if self._pending else self._prev.last_revision + 1
        if encoder.first_revision != start:
            # Only possible after a full snapshot whose revision was a lower bound (its first
            # delta repeats events) or after etcd history was rewritten; restore copes with the
            # first, a full snapshot is the answer to the second.
            log.info("delta does not begin at its start revision", extra={
                "start_revision": start, "first_event_revision": encoder.first_revision})
        self._pending.append(_SealedDelta(start, encoder.last_revision, encoder.finish(), encoder.count))

    async def _flush_deltas(self, final: bool = False) -> Snapshot | None:
        await self._ensure_loaded()
        if self._prev is None:
            return None
        self._seal()
        metrics.snapshot_required.labels(INCR).set(0)
        uploaded = None
        while self._pending:
            sealed = self._pending[0]
            started = time.monotonic()
            snap = new_snapshot(Kind.INCR, sealed.start, sealed.last, prefix=self.store.prefix,
                                compression_suffix=self.compression_suffix,
                                is_final=final and len(self._pending) == 1,
                                created_on=datetime.fromtimestamp(self._clock(), tz=timezone.utc))
            try:
                stored = await asyncio.to_thread(self._save_delta, snap, sealed.payload)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self._record_failure(INCR, exc, started)
                metrics.snapshot_required.labels(INCR).set(1)
                raise
            self._pending.pop(0)
            self._prev = snap
            self._deltas.append(snap)
            metrics.snapshot_duration.labels(INCR, "true").observe(time.monotonic() - started)
            self._record_success(snap)
            log.info("delta snapshot uploaded", extra={
                "snapshot": snap.snap_name, "store": self.store.display, "events": sealed.events,
                "bytes": len(sealed.payload), "stored_bytes": stored})
            self._notify(snap)
            uploaded = snap
        if self._encoder.count:
            metrics.snapshot_required.labels(INCR).set(1)
        return uploaded

    def _save_delta(self, snap: Snapshot, payload: bytes) -> int:
        from .compression import compressing_reader

        return self.store.save(snap, compressing_reader(io.BytesIO(payload), self.compression))

    def _new_encoder(self):
        from .delta import DeltaEncoder

        return DeltaEncoder()

    # -- watch -------------------------------------------------------------------------------
    def _start_watch(self) -> None:
        if self._watch_task is not None and not self._watch_task.done():
            return
        if self._next_rev is None:
            return
        self._watching = True
        self._watch_task = asyncio.get_running_loop().create_task(self._watch_loop(), name="snapshotter-watch")

    async def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            if asyncio.current_task() is not None and asyncio.current_task().cancelling():
                raise
        except Exception:  # noqa: BLE001 - the loop logs its own failures
            pass

    async def _watch_loop(self) -> None:
        delay = WATCH_RETRY_MIN
        while True:
            start = self._next_rev
            try:
                client = await self._get_client()
                async for response in etcdclient.watch_responses(client, start):
                    delay = WATCH_RETRY_MIN
                    self._on_watch_response(response)
            except etcdclient.WatchCompacted as exc:
                log.warning("cannot watch from the last snapshotted revision (compacted); a full snapshot follows",
                            extra={"from_revision": exc.start_revision, "compacted_to": exc.compact_revision})
                self._require_full("watch start revision compacted")
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any break of the stream is resumed
                log.warning("watch interrupted; resuming", extra={"from_revision": self._next_rev, "error": str(exc),
                                                                  "retry_in_seconds": delay})
                metrics.snapshotter_failure.labels("watch").inc()
                if etcdclient.needs_reconnect(exc):
                    await self._reset_client()
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)

    def _on_watch_response(self, response) -> None:
        """Buffer one watch response. Synchronous on purpose: a delta is sealed between two
        responses, never inside one, so a revision is never split between deltas."""
        from .delta import Event, EventType, KeyValue

        floor = self._next_rev
        expected = floor - 1
        stamp = self._capture_time()
        added = 0
        for ev in response.events:
            kv = ev.kv
            rev = kv.mod_revision
            if rev < floor:
                continue  # already buffered or snapshotted (a resumed watch never repeats, but be sure)
            if rev not in (expected, expected + 1):
                # Every revision after 1 carries at least one event on a whole-keyspace watch.
                log.warning("watch skipped revisions; a full snapshot follows",
                            extra={"expected_revision": expected + 1, "got_revision": rev})
                self._require_full("watch skipped revisions")
            expected = rev
            self._encoder.add(Event(
                type=EventType.DELETE if ev.type == 1 else EventType.PUT,
                kv=KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                            mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease),
                time=stamp,
            ))
            added += 1
        if added:
            self._next_rev = expected + 1
            metrics.snapshot_required.labels(INCR).set(1)
        self._progress.set()
        if self._encoder.size >= self.memory_limit:
            self._wakeup.set()

    # -- helpers -----------------------------------------------------------------------------
    def _capture_time(self) -> str:
        from .delta import format_go_time

        seconds, nanos = divmod(int(self._clock() * 1e9), 1_000_000_000)
        return format_go_time(datetime.fromtimestamp(seconds).astimezone(), nanos)

    async def _get_client(self):
        if self._client is None:
            client = self._client_factory()
            if inspect.isawaitable(client):
                client = await client
            self._client = client
        return self._client

    async def _reset_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # noqa: BLE001
                pass

    async def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        snaps = await asyncio.to_thread(self.store.list)
        full, deltas = latest_chain(snaps)
        self._prev_full, self._deltas = full, list(deltas)
        self._prev = deltas[-1] if deltas else full
        if self._prev is not None:
            self._next_rev = self._prev.last_revision + 1
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

    def _notify(self, snap: Snapshot) -> None:
        for fn in list(self._listeners):
            try:
                result = fn(snap)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._listener_tasks.add(task)
                    task.add_done_callback(self._listener_done)
            except Exception as exc:  # noqa: BLE001 - a listener never fails a snapshot
                log.warning("snapshot listener failed", extra={"snapshot": snap.snap_name, "error": str(exc)})

    def _listener_done(self, task: asyncio.Task) -> None:
        self._listener_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("snapshot listener failed", extra={"error": str(task.exception())})


def _error_label(exc: BaseException) -> str:
    """A bounded label for snapshotter_failure: the error class (as GC does), never a message."""
    return type(exc).__name__


async def _wait_event(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return event.is_set()


async def _wait_any(a: asyncio.Event, b: asyncio.Event, timeout: float) -> None:
    if a.is_set() or b.is_set():
        return
    tasks = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
