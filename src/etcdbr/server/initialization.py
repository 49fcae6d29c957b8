"""The ``/initialization/*`` state machine of the HTTP API.

The etcd container's bootstrap script calls ``/initialization/start`` before it starts etcd and
polls ``/initialization/status`` until it reads a terminal state, so the state is read-once:
``New`` -> ``Progress`` -> ``Successful`` | ``Failed``, and reporting a terminal state resets it
to ``New`` (the Go tool's contract, which scripts depend on).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

NEW = "New"
PROGRESS = "Progress"
SUCCESSFUL = "Successful"
FAILED = "Failed"
MODES = ("full", "sanity")


class Initialization:
    """Runs ``runner(mode)`` at most once at a time. All methods run on the event loop."""

    def __init__(self, runner: Callable[[str], Awaitable[None]]) -> None:
        self._runner = runner
        self.status = NEW
        self._task: asyncio.Task | None = None

    @property
    def in_progress(self) -> bool:
        return self.status == PROGRESS

    def start(self, mode: str | None) -> bool:
        """Start if ``New``; returns whether it started. An unknown mode means ``full``, as in Go."""
        if self.status != NEW:
            log.info("Initialization already requested; ignoring", extra={"status": self.status})
            return False
        mode = mode if mode in MODES else "full"
        log.info("Received start initialization request", extra={"mode": mode})
        self.status = PROGRESS
        self._task = asyncio.get_running_loop().create_task(self._run(mode), name="initialization")
        return True

    async def _run(self, mode: str) -> None:
        try:
            await self._runner(mode)
        except asyncio.CancelledError:
            self.status = FAILED
            raise
        except Exception as exc:  # noqa: BLE001 - the status is the report; the reason goes to the log
            from ..logs import redact

            log.error("Failed initialization", extra={"error": redact(str(exc)), "error_type": type(exc).__name__})
            self.status = FAILED
            return
        log.info("Successfully initialized data directory for etcd")
        self.status = SUCCESSFUL

    def report(self) -> str:
        """The current status; a terminal one is reported once, then the state is ``New`` again."""
        status = self.status
        if status in (SUCCESSFUL, FAILED):
            self.status = NEW
        return status

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:  # _run reports every other failure itself
                pass
