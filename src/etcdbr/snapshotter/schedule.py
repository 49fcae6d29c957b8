"""When to snapshot (pure rules): the startup decision, the cron schedule, and the --backoff-* pauses."""

from __future__ import annotations

from datetime import datetime

from croniter import croniter

from ..config import SnapshotterConfig
from ..retry import UNLIMITED, Policy
from ..snapshot import Snapshot


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


def next_run(schedule: str, after: datetime) -> datetime:
    """The first time of ``schedule`` after ``after``. Cron is read in local time, as the Go tool's
    cron library does."""
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
    if next_run(schedule, prev_full.created_on) > now:
        return False
    wait_hours = (next_run(schedule, now) - now).total_seconds() / 3600
    return age_hours + wait_hours > window


def backoff_policy(sconfig: SnapshotterConfig, attempts: int | None = None) -> Policy:
    """The ``--backoff-*`` flags as a retry policy: ``--backoff-attempt-limit`` attempts (or
    ``attempts``), pauses of 1s, m, m^2 ... seconds (``--backoff-multiplier``) up to
    ``--backoff-threshold-time``. Startup retries with it; the loop's full and delta snapshots, and
    the server's restarts of a snapshotter that gave up, take its pauses without a limit."""
    return _backoff(sconfig.backoff_multiplier, sconfig.backoff_threshold_time.total_seconds(),
                    sconfig.backoff_attempt_limit if attempts is None else attempts)


def backoff_delay(attempt: int, multiplier: float, threshold: float) -> float:
    """Seconds before retry ``attempt`` (0-based) under the ``--backoff-*`` flags: 1, m, m^2 ...
    capped at ``threshold``."""
    return _backoff(multiplier, threshold).wait(attempt)


def _backoff(multiplier: float, threshold: float, attempts: int = UNLIMITED) -> Policy:
    return Policy(attempts=max(1, attempts), first_wait=1.0, multiplier=float(multiplier), max_wait=threshold)
