"""What the copier knows is where: the keys on each endpoint and the snapshots still to copy.

Between two listings the copier keeps its picture current from what it does and hears: a
verified copy is on the secondary, a notified upload is on the primary. Two rules keep a sync run
from undoing the event-driven copies that run beside it:

* keys copied since the run listed the primary (``copied_during_run``) are never its orphans: a
  snapshot uploaded after that listing may already be on the secondary;
* a snapshot ``notify`` queued after the run listed the primary stays pending even though the
  run's plan does not know it.
"""

from __future__ import annotations

import time

from .. import metrics
from ..snapshot import Snapshot, sort_key
from .plan import SyncPlan
from .transfer import PRIMARY, SECONDARY


class Inventory:
    """Keys on each endpoint (the last listing, plus verified copies on the secondary and
    notified uploads on the primary since; their sizes are the counts ``/sync/status`` serves)
    and the snapshots pending a copy, with when ``notify`` queued them."""

    def __init__(self) -> None:
        self.on_primary: set[str] = set()
        self.on_secondary: set[str] = set()
        self.listed = {PRIMARY: False, SECONDARY: False}
        #: Keys copied since the current run listed the primary: never orphans of that run.
        self.copied_during_run: set[str] | None = None
        self.pending: dict[str, Snapshot] = {}
        self.queued_at: dict[str, float] = {}     # when notify() queued a key (monotonic)

    def snapshots(self, role: str) -> int | None:
        """How many snapshots ``role`` holds, as far as known (None before its first listing)."""
        if not self.listed[role]:
            return None
        return len(self.on_primary if role == PRIMARY else self.on_secondary)

    def update_counts(self) -> None:
        for role, keys in ((PRIMARY, self.on_primary), (SECONDARY, self.on_secondary)):
            if self.listed[role]:
                metrics.endpoint_snapshots.labels(endpoint=role).set(len(keys))

    def _pending_changed(self) -> None:
        metrics.sync_pending.set(len(self.pending))

    # -- what the copier hears and does --------------------------------------------------------
    def queued(self, snapshot: Snapshot) -> None:
        """``notify`` handed over a snapshot just uploaded to the primary."""
        key = snapshot.copier_key()
        self.pending.setdefault(key, snapshot)
        self.queued_at.setdefault(key, time.monotonic())
        if self.listed[PRIMARY]:
            self.on_primary.add(key)
            self.update_counts()
        self._pending_changed()

    def copied(self, key: str) -> None:
        """A verified copy of ``key`` is on the secondary."""
        self.on_secondary.add(key)
        if self.copied_during_run is not None:
            self.copied_during_run.add(key)
        self.pending.pop(key, None)
        self.queued_at.pop(key, None)
        self.update_counts()
        self._pending_changed()

    def deleted(self, key: str) -> None:
        """An orphan was deleted from the secondary."""
        self.on_secondary.discard(key)
        self.update_counts()

    def left_behind(self) -> list[Snapshot]:
        """Pending snapshots not on the secondary, oldest first (logged by name at shutdown)."""
        return sorted((s for k, s in self.pending.items() if k not in self.on_secondary), key=sort_key)

    # -- a sync run ----------------------------------------------------------------------------
    def begin_run(self) -> None:
        self.copied_during_run = set()
        self.queued_at = {k: v for k, v in self.queued_at.items() if k in self.pending}

    def end_run(self) -> None:
        self.copied_during_run = None

    def protected_keys(self, in_flight) -> set[str]:
        """Keys the run must not take for orphans: copied since its listing, or being copied."""
        assert self.copied_during_run is not None
        return set(self.copied_during_run) | set(in_flight)

    def listed_endpoint(self, role: str, snaps: list[Snapshot]) -> None:
        if role == PRIMARY:  # counted even when the secondary's listing fails next
            self.on_primary = {s.copier_key() for s in snaps}
        self.listed[role] = True
        self.update_counts()

    def planned(self, plan: SyncPlan, secondary: list[Snapshot], run_started: float) -> None:
        """Take a run's plan (its primary listed at ``run_started``, monotonic) as the new picture."""
        assert self.copied_during_run is not None
        self.on_secondary = ({s.copier_key() for s in secondary} - {s.copier_key() for s in plan.to_replace}
                             | self.copied_during_run)
        # The primary: what it listed, plus what was uploaded (notified) since it was listed.
        self.on_primary |= {k for k, at in self.queued_at.items() if at >= run_started}
        self.update_counts()
        # Pending: what this run must copy, plus what notify() queued after the primary was
        # listed (not in the listing yet). Anything else pending has been dealt with or deleted.
        missing = plan.missing_keys
        self.pending = {k: v for k, v in self.pending.items()
                        if k in missing or self.queued_at.get(k, -1.0) >= run_started}
        self.pending.update({s.copier_key(): s for s in plan.to_copy})
        self._pending_changed()
