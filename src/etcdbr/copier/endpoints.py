"""Whether each endpoint works, as the copier saw it last: outages said when they happen, recoveries
said with how long they took.

The first failed copy, listing or deletion of an endpoint flips it to unavailable at once (metric,
``/sync/status``) and logs one WARN naming it; later failures while it is down add nothing. The
first success flips it back and wakes the periodic loop, whose run then catches up; once that run
listed both endpoints it logs one INFO with the downtime and the number of copies the catch-up took.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from .. import metrics
from ..snapstore import SnapStore
from .transfer import PRIMARY, SECONDARY, failure_reason

log = logging.getLogger("etcdbr.copier")


class EndpointStates:
    """Availability of the ``primary`` and ``secondary`` endpoints; ``on_recovery()`` is called
    when one answers again (the copier wakes its loop to catch up now)."""

    def __init__(self, primary: SnapStore, secondary: SnapStore, on_recovery: Callable[[], None]) -> None:
        self._stores = {PRIMARY: primary, SECONDARY: secondary}
        self._on_recovery = on_recovery
        self.available: dict[str, bool | None] = {PRIMARY: None, SECONDARY: None}
        self._down_since: dict[str, float] = {}    # role -> monotonic time of its first failure
        self._recovered: dict[str, list] = {}      # role -> [seconds it was down, copies since]

    @property
    def any_down(self) -> bool:
        return False in self.available.values()

    def failed(self, role: str, exc: BaseException) -> None:
        """An endpoint failed a copy, listing or deletion: the first failure flips its state at
        once (metric, status) and says so; later ones while it is down add nothing."""
        metrics.endpoint_up.labels(endpoint=role).set(0)
        if self.available[role] is False:
            return
        self.available[role] = False
        self._down_since[role] = time.monotonic()
        self._recovered.pop(role, None)
        log.warning(f"{role.capitalize()} snapstore unavailable",
                    extra={"endpoint": self._stores[role].display, "reason": failure_reason(exc)})

    def ok(self, role: str) -> None:
        metrics.endpoint_up.labels(endpoint=role).set(1)
        was = self.available[role]
        self.available[role] = True
        if was is False:
            down = time.monotonic() - self._down_since.pop(role, time.monotonic())
            self._recovered[role] = [down, 0]
            self._on_recovery()  # catch up now rather than at the next period

    def copied(self) -> None:
        """A verified copy: both endpoints work, and it counts towards each recovery's catch-up."""
        for role in (PRIMARY, SECONDARY):
            self.ok(role)
        for counts in self._recovered.values():
            counts[1] += 1

    def announce_recoveries(self, pending: int) -> None:
        """After a run that listed both endpoints: say which came back, after how long, and how
        many copies the catch-up took."""
        for role in list(self._recovered):
            if self.available[role] is not True:
                continue
            down, copies = self._recovered.pop(role)
            log.info(f"{role.capitalize()} snapstore available again after {down:.1f}s; "
                     f"{copies} snapshots copied to catch up",
                     extra={"endpoint": self._stores[role].display, "down_seconds": round(down, 3),
                            "copies_caught_up": copies, "pending": pending})

    def status(self, role: str, snapshots: int | None) -> dict:
        """One endpoint's part of ``/sync/status``."""
        return {"endpoint": self._stores[role].display, "available": self.available[role], "snapshots": snapshots}
