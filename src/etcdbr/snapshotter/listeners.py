"""Who hears of each snapshot after its upload succeeded (the copier, to copy it at once)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Callable

from ..snapshot import Snapshot

log = logging.getLogger("etcdbr.snapshotter")


class Listeners:
    """``fn(snapshot)`` for every listener after each upload. A listener may return an awaitable
    (run as a task); a failing listener is logged and never fails the snapshot."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[Snapshot], Any]] = []
        self._tasks: set[asyncio.Task] = set()

    def add(self, fn: Callable[[Snapshot], Any]) -> None:
        self._listeners.append(fn)

    def notify(self, snap: Snapshot) -> None:
        for fn in list(self._listeners):
            try:
                result = fn(snap)
                if inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._done)
            except Exception as exc:  # noqa: BLE001 - a listener never fails a snapshot
                log.warning("snapshot listener failed", extra={"snapshot": snap.snap_name, "error": str(exc)})

    async def wait(self, timeout: float) -> None:
        """Let the listeners' tasks finish, for at most ``timeout`` seconds."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("snapshot listener failed", extra={"error": str(task.exception())})
