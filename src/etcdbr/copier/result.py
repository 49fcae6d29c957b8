"""What a sync run did: counts and failures by snapshot name, served by ``/sync/status``."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from .. import metrics
from ..logs import redact
from ..snapshot import Snapshot
from .plan import SyncPlan


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

    def record(self, name: str, outcome: str, detail: str, size: int) -> None:
        """Count one copy's outcome: success, vanished, cancelled or failed (with its reason)."""
        if outcome == "success":
            self.copied.append(name)
            self.bytes_copied += size
        elif outcome == "vanished":
            self.vanished.append(name)
        elif outcome == "cancelled":
            self.cancelled.append(name)
        else:
            self.failed[name] = detail

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


class RunHistory:
    """The copier's runs so far: their metrics, and what ``/sync/status`` says of them."""

    def __init__(self) -> None:
        self.runs = 0
        self.last_run: SyncResult | None = None
        self.last_success: float | None = None   # unix time of the last run that handled everything
        self.last_copy: float | None = None      # unix time of the last verified copy

    def finished(self, result: SyncResult) -> None:
        self.runs += 1
        self.last_run = result
        metrics.sync_runs.labels(succeeded=metrics.label_bool(result.ok)).inc()
        metrics.sync_duration.observe(result.duration)
        if result.ok:
            self.last_success = time.time()
            metrics.sync_last_success.set(self.last_success)

    def status(self, now: float, period: float) -> dict:
        return {
            "lastSuccessfulSync": _iso(self.last_success),
            "secondsSinceLastSuccessfulSync": round(now - self.last_success, 3) if self.last_success else None,
            "lastVerifiedCopy": _iso(self.last_copy),
            "runs": self.runs,
            "periodSeconds": period,
            "lastRun": self.last_run.to_json() if self.last_run else None,
        }


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat() if ts else None


#: ``progress(event, snapshot, value)``: ("plan", None, operations), ("copied", snap, bytes),
#: ("deleted", snap, 0), ("failed", snap, 0). Called on the event loop or in a copy thread.
ProgressFn = Callable[[str, "Snapshot | None", int], None]
