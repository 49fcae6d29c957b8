"""The one runner of what backs up an etcd: the snapshotter, garbage collection, the
defragmentation schedule and, with a secondary store, the copier and the secondary's garbage
collection.

``server`` runs one for every term in which its member is the etcd leader; the ``snapshot``
command runs one in the foreground (:func:`snapshot_until_stopped`) until SIGTERM or SIGINT.

:meth:`BackupRunner.close` keeps the order that makes the secondary complete after a stop (issue
14): the copier starts draining (no new sync runs, but it keeps copying, and still takes what the
snapshotter uploads) at the same moment the snapshotter is told to stop and uploads its buffered
events as the final delta; then the copier gets what is left of the grace period to copy and
verify the rest, and aborts what it could not.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine

from croniter import croniter

from .config import Config
from .errors import EtcdbrError
from .etcd import client as etcdclient
from .gc import GarbageCollector
from .logs import redact
from .retry import UNLIMITED, any_failure, aretry_call, wait_unless_stopped
from .snapshotter import Snapshotter, backoff_policy

if TYPE_CHECKING:  # imported when a secondary store is configured: a single store never needs it
    from .copier import BackupCopier

log = logging.getLogger(__name__)


def _error_text(exc: BaseException) -> str:
    return redact(str(exc) if isinstance(exc, EtcdbrError) else f"{type(exc).__name__}: {exc}")


class BackupRunner:
    """Everything that backs up one etcd into ``primary`` (and ``secondary``) until :meth:`close`.

    Without a ``primary`` (a server without a storage provider) only the defragmentation schedule
    runs. ``full_at_start``: see :meth:`Snapshotter.run`. ``restart``: a snapshotter that gives up
    (etcd or the store down for its whole startup backoff) is started again after the ``--backoff-*``
    pauses, for as long as the runner runs (the server); without it, its failure ends the run and is
    raised by :meth:`snapshotter_finished` (the ``snapshot`` command). ``member_endpoints()`` lists
    the client URLs to defragment (the server asks etcd for its members); by default ``--endpoints``.
    """

    def __init__(self, config: Config, primary, secondary=None, *, clock: Callable[[], float] = time.time,
                 full_at_start: bool | None = None, restart: bool = True,
                 member_endpoints: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        self.config = config
        self.primary = primary
        self.secondary = secondary
        self.clock = clock
        self.full_at_start = full_at_start
        self.restart = restart
        self.member_endpoints = member_endpoints
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.snapshotter: Snapshotter | None = None
        self.copier: BackupCopier | None = None
        self._snapshotter_task: asyncio.Task | None = None
        self._raised: asyncio.Task | None = None     # a task whose failure its awaiter has reported

    async def start(self) -> None:
        config = self.config
        if self.primary is not None:
            self.snapshotter = Snapshotter(self.primary, config, clock=self.clock)
            self._snapshotter_task = self._spawn(self._run_snapshotter(), "snapshotter")
            self._spawn(GarbageCollector(self.primary, config.snapshotter, self.clock).run(self.stop), "gc")
            if self.secondary is not None:
                from .copier import BackupCopier

                self.copier = BackupCopier(self.primary, self.secondary, config.sync)
                self.snapshotter.add_listener(self.copier.notify)
                await self.copier.start()
                # The Go tool's secondary GC: the same policy, independent of the primary's.
                self._spawn(GarbageCollector(self.secondary, config.snapshotter, self.clock).run(self.stop),
                            "secondary-gc")
        self._spawn(self._defragment_on_schedule(), "defragmentation")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    async def snapshotter_finished(self) -> None:
        """Until the snapshotter ends: after :attr:`stop`, or when it gave up (its error is raised
        here, and not logged again by :meth:`close`)."""
        if self._snapshotter_task is None:
            await self.stop.wait()
            return
        self._raised = self._snapshotter_task
        await self._snapshotter_task

    async def _run_snapshotter(self) -> None:
        assert self.snapshotter is not None
        snapshotter = self.snapshotter

        def restarting(attempt: int, exc: BaseException, pause: float) -> None:
            log.error("snapshotter stopped after repeated failures; restarting it",
                      extra={"error": _error_text(exc), "retry_in_seconds": pause})

        try:
            if not self.restart:
                await snapshotter.run(self.stop, full_at_start=self.full_at_start)
                return
            # As the Go server's probe loop: start it again, for as long as this runner runs.
            await aretry_call(backoff_policy(self.config.snapshotter, attempts=UNLIMITED),
                              lambda: snapshotter.run(self.stop, full_at_start=self.full_at_start),
                              retry_on=any_failure, stop=self.stop, on_retry=restarting, on_stop=lambda last: None)
        finally:
            await snapshotter.close()

    async def _defragment_on_schedule(self) -> None:
        """Defragment etcd on ``--defragmentation-schedule`` and follow each with a full snapshot
        (a defragmented member's snapshot is smaller, and restores start from it), as the Go tool
        does. A failure is logged and the next scheduled time tries again."""
        schedule = self.config.snapshotter.defragmentation_schedule
        while not self.stop.is_set():
            # Cron in local time, like the full-snapshot schedule.
            now = datetime.fromtimestamp(self.clock()).astimezone()
            due = croniter(schedule, now).get_next(datetime)
            if await wait_unless_stopped(self.stop, (due - now).total_seconds()):
                return
            try:
                endpoints = (await self.member_endpoints() if self.member_endpoints is not None
                             else list(self.config.etcd.endpoints))
                log.info("starting scheduled defragmentation", extra={"members": len(endpoints)})
                done = await etcdclient.defragment_members(self.config.etcd, endpoints)
                log.info("defragmentation done", extra={"members": len(done)})
            except Exception as exc:  # noqa: BLE001 - one failed run never ends the schedule
                log.warning("scheduled defragmentation failed", extra={"error": _error_text(exc)})
                continue
            snapshotter = self.snapshotter
            if snapshotter is not None and snapshotter.active and not self.stop.is_set():
                try:
                    await snapshotter.take_full_snapshot()
                except Exception as exc:  # noqa: BLE001 - the snapshotter's own schedule goes on
                    log.warning("full snapshot after defragmentation failed", extra={"error": _error_text(exc)})

    async def close(self, grace: float | None = None) -> None:
        """Stop within ``grace`` seconds (None: wait for every task however long). The copier
        drains from the start while the snapshotter uploads its buffered events as the final
        delta; then the copier gets what is left of ``grace`` to copy and verify the rest."""
        deadline = None if grace is None else time.monotonic() + grace
        self.stop.set()
        if self.copier is not None:
            self.copier.begin_drain()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=None if grace is None else max(grace, 1.0))
            for task in pending:
                log.warning("task did not stop in time; cancelling it", extra={"task": task.get_name()})
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
            for task in self.tasks:
                if task is self._raised or not task.done() or task.cancelled() or task.exception() is None:
                    continue
                exc = task.exception()
                log.error("backup task failed", extra={"task": task.get_name(),
                                                       "error": redact(f"{type(exc).__name__}: {exc}")})
        if self.copier is not None:
            left = self.config.sync.shutdown_grace.total_seconds() if deadline is None else deadline - time.monotonic()
            await self.copier.stop(max(0.0, left))


async def snapshot_until_stopped(config: Config, store) -> None:
    """The ``snapshot`` command: a full snapshot at once, then the schedule, garbage collection and
    defragmentation until SIGTERM or SIGINT, when the buffered events are uploaded as a last delta.
    Raises when the snapshotter gives up at startup."""
    runner = BackupRunner(config, store, full_at_start=True, restart=False)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.stop.set)
    try:
        await runner.start()
        await runner.snapshotter_finished()
        log.info("snapshotter stopped")
    finally:
        await runner.close()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


__all__ = ["BackupRunner", "snapshot_until_stopped"]
