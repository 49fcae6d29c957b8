"""Backup leader election: the sidecar whose etcd member is the Raft leader takes the backups.

No lock of our own: etcd has already elected a leader, and asking our own member for its status
(``--endpoints[0]``) says whether that is us. Two sidecars can both believe they lead only for
up to one ``--reelection-period`` around a Raft leader change; snapshots are idempotent enough
(names carry revisions and times) for that window to be harmless.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Awaitable, Callable

from .. import metrics
from ..errors import EtcdbrError
from ..retry import wait_unless_stopped

log = logging.getLogger(__name__)


class Role(str, enum.Enum):
    UNKNOWN = "Unknown"    # etcd unreachable, no Raft leader, or not asked yet
    FOLLOWER = "Follower"
    LEADER = "Leader"


class LeaderElector:
    """Asks ``check()`` every ``period`` seconds whether we lead, and calls the callbacks on changes.

    ``check`` returns True (our member leads), False (another member leads) or raises
    :class:`EtcdbrError` (unreachable, or no leader). ``suspended()`` returning True means "do not
    lead now" (an initialization is rewriting the data dir). Callbacks are awaited in order, so a
    new term never starts before the previous one has stopped.
    """

    def __init__(
        self,
        check: Callable[[], Awaitable[bool]],
        period: float,
        on_started_leading: Callable[[], Awaitable[None]],
        on_stopped_leading: Callable[[str], Awaitable[None]],
        suspended: Callable[[], bool] = lambda: False,
    ) -> None:
        self._check = check
        self.period = period
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._suspended = suspended
        self.role = Role.UNKNOWN
        self.last_error = ""
        self.leading = False
        self.checked_once = False
        # Rounds and resignations never interleave: a term fully stops before the next starts.
        self._lock = asyncio.Lock()

    async def _set_leading(self, leading: bool, reason: str) -> None:
        if leading and not self.leading:
            self.leading = True
            metrics.is_leader.set(1)
            log.info("backup-restore became leader, starting backups")
            await self._on_started()
        elif not leading and self.leading:
            self.leading = False
            metrics.is_leader.set(0)
            log.info("backup-restore stopped leading", extra={"reason": reason})
            await self._on_stopped(reason)

    async def resign(self, reason: str) -> None:
        """Stop leading now (initialization, shutdown); the next round may lead again."""
        async with self._lock:
            await self._set_leading(False, reason)
            self.role = Role.UNKNOWN

    async def step(self) -> Role:
        """One election round."""
        async with self._lock:
            return await self._step()

    async def _step(self) -> Role:
        if self._suspended():
            await self._set_leading(False, "initialization in progress")
            self.role = Role.UNKNOWN
            return self.role
        try:
            leads = await self._check()
        except EtcdbrError as exc:
            from ..logs import redact

            message = redact(str(exc))
            if message != self.last_error or self.role is not Role.UNKNOWN:
                log.warning("failed to elect the backup-restore leader; waiting for re-election",
                            extra={"error": message})
            self.last_error = message
            self.role = Role.UNKNOWN
            self.checked_once = True
            await self._set_leading(False, "leadership unknown")
            return self.role
        self.last_error = ""
        self.checked_once = True
        new_role = Role.LEADER if leads else Role.FOLLOWER
        if new_role is not self.role:
            log.info("backup-restore changed role", extra={"from": self.role.value, "to": new_role.value})
        self.role = new_role
        await self._set_leading(leads, "another member is the etcd leader")
        return self.role

    async def run(self, stop: asyncio.Event) -> None:
        """Elect now, then every period, until ``stop``. The caller ends a running term (it may want
        a final snapshot first)."""
        log.info("Starting leader election", extra={"period_seconds": self.period})
        try:
            while not stop.is_set():
                await self.step()
                await wait_unless_stopped(stop, self.period)
        finally:
            metrics.is_leader.set(0)
