"""Point-in-time restore: which full snapshot and which deltas reach a target revision.

A target is a revision (``--to-revision``) or a time (``--to-time``); a time is turned into a
revision once, here, and from then on the one value travels down: the chain carries it
(:attr:`.restorer.Chain.upto`) and the replay stops at it (:class:`.replay.DeltaReplay`), so the
restored etcd's revision is exactly the target.

* The base is the newest full snapshot at or below the target; the deltas are those after it up
  to the one holding the target, contiguous (a delta may overlap revisions already restored: the
  replay skips them).
* A target the store cannot reach (before its oldest full snapshot, after its last delta, or in a
  revision range no delta holds) is one error naming the ranges the store can restore to.
* A time becomes the revision of the last event recorded at or before it, in revision order: the
  first event recorded later ends the search, so no event after the time is ever restored. Where
  no delta holds the events (before the first delta, or after a full snapshot whose deltas are
  gone) a full snapshot named at least a second before the time stands for its revision. A time
  after the last event the store holds is refused (writes after it, if any, are not in the
  store), and so is a time that falls in revisions no delta holds (when they were written is not
  known).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from ..errors import ConfigError, RestoreError
from ..history import NAME_TIME_SLACK_SECONDS, HistoryError, delta_events, event_time
from ..snapshot import Snapshot, sort_key


class TargetOutOfRange(RestoreError):
    """The store cannot restore to the target (exit 1)."""


@dataclass(frozen=True)
class Target:
    """Where a point-in-time restore stops: a revision, or the last revision at or before a time."""

    revision: int | None = None
    time: datetime | None = None

    def __str__(self) -> str:
        if self.revision is not None:
            return f"--to-revision={self.revision}"
        assert self.time is not None
        return f"--to-time={format_time(self.time)}"


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def target_from(config) -> Target | None:
    """The target of ``--to-revision`` / ``--to-time`` (None: the end of the chain)."""
    extra = config.extra
    revision, when = extra.get("to_revision"), extra.get("to_time")
    if revision is not None and when is not None:
        raise ConfigError("--to-revision and --to-time are exclusive: give one of them")
    if revision is not None:
        return Target(revision=int(revision))
    if when is not None:
        return Target(time=when)
    return None


def _fulls(snapshots: list[Snapshot]) -> list[Snapshot]:
    return sorted((s for s in snapshots if s.is_full and not s.is_chunk), key=sort_key)


def _deltas(snapshots: list[Snapshot]) -> list[Snapshot]:
    return sorted((s for s in snapshots if s.is_delta and not s.is_chunk), key=sort_key)


def available_ranges(snapshots: list[Snapshot]) -> list[tuple[int, int]]:
    """The revision ranges (inclusive) a restore from these snapshots can reach: from each full
    snapshot to the end of the contiguous deltas after it, overlapping ranges merged."""
    deltas = _deltas(snapshots)
    ranges: list[tuple[int, int]] = []
    for full in _fulls(snapshots):
        reach = full.last_revision
        for d in deltas:
            if d.last_revision <= reach:
                continue
            if d.start_revision > reach + 1:
                break
            reach = d.last_revision
        ranges.append((full.last_revision, reach))
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def describe_ranges(ranges: list[tuple[int, int]]) -> str:
    if not ranges:
        return "none (the store holds no full snapshot)"
    return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)


def out_of_range(display: str, what: str, snapshots: list[Snapshot]) -> TargetOutOfRange:
    return TargetOutOfRange(f"{display}: {what} is not in the backups; the revisions this store can restore to "
                            f"are {describe_ranges(available_ranges(snapshots))}")


def plan(snapshots: list[Snapshot], revision: int, display: str):
    """The chain that restores exactly ``revision``: the newest full snapshot at or below it and the
    contiguous deltas after it up to the one holding it (a :class:`.restorer.Chain` with ``upto``)."""
    from .restorer import Chain

    fulls = [f for f in _fulls(snapshots) if f.last_revision <= revision]
    if not fulls:
        raise out_of_range(display, f"revision {revision}", snapshots)
    base = fulls[-1]
    chosen: list[Snapshot] = []
    reach = base.last_revision
    for d in _deltas(snapshots):
        if reach >= revision:
            break
        if d.last_revision <= reach:
            continue
        if d.start_revision > reach + 1:
            break  # a gap before the target
        chosen.append(d)
        reach = d.last_revision
    if reach < revision:
        raise out_of_range(display, f"revision {revision}", snapshots)
    return Chain(base, chosen, upto=revision)


def resolve_time(store, snapshots: list[Snapshot], when: datetime) -> int:
    """The revision of the last event recorded at or before ``when`` (see the module's doc)."""
    slack = timedelta(seconds=NAME_TIME_SLACK_SECONDS)
    second = timedelta(seconds=1)
    found: int | None = None
    last_seen: tuple[int, str] | None = None
    later = False  # an event or snapshot recorded after the time was met: the search is over
    snaps = sorted((s for s in snapshots if not s.is_chunk), key=sort_key)
    for snap in snaps:
        if found is not None and snap.last_revision <= found:
            continue
        if snap.is_full:
            if snap.created_on + second <= when:
                found = max(found or 0, snap.last_revision)
            elif snap.created_on > when:
                later = True  # taken after the time: everything after it is later too
                if found is not None and snap.last_revision > found:
                    _unknown_between(store, snapshots, when, found, snap.last_revision)
                break
            continue  # a full named in the time's second: the deltas after it decide
        if snap.created_on + slack <= when:
            found = snap.last_revision  # cut well before the time: every event in it is earlier
            last_seen = (snap.last_revision, "")
            continue
        candidate, stamp, later = _scan_delta(store, snap, when, found, snapshots)
        if candidate is not None and candidate != found:
            found, last_seen = candidate, (candidate, stamp)
        if later:
            break
    shown = format_time(when)
    if later and found is not None:
        return found
    if found is None:
        oldest = next((s for s in snaps if s.is_full), None)
        since = f" (its oldest full snapshot was taken at {format_time(oldest.created_on)})" if oldest else ""
        raise TargetOutOfRange(f"{store.display}: --to-time={shown} is before the oldest revision the backups "
                               f"hold{since}; the revisions this store can restore to are "
                               f"{describe_ranges(available_ranges(snapshots))}")
    at = f", recorded at {last_seen[1]}" if last_seen and last_seen[1] else ""
    raise TargetOutOfRange(f"{store.display}: --to-time={shown} is after the last event the backups hold (revision "
                           f"{found}{at}); writes after it, if any, are not in the store: restore to "
                           f"--to-revision={found}, or without a target to the end of the chain")


def _scan_delta(store, snap: Snapshot, when: datetime, found: int | None, snapshots: list[Snapshot]
                ) -> tuple[int | None, str, bool]:
    """One delta read to its end (its trailer must check out before its events count): the last
    revision recorded at or before ``when`` after ``found``, its time, and whether a later event
    was met."""
    candidate, stamp, later = found, "", False
    try:
        for event in delta_events(store, snap):
            rev = event.kv.mod_revision
            if later or (candidate is not None and rev <= candidate):
                continue
            if event_time(event, snap) > when:
                later = True
                if candidate is not None and rev > candidate + 1:
                    _unknown_between(store, snapshots, when, candidate, rev - 1)
                continue
            candidate, stamp = rev, event.time
    except HistoryError as exc:
        raise RestoreError(str(exc)) from None
    return candidate, stamp, later


def _unknown_between(store, snapshots: list[Snapshot], when: datetime, known: int, upto: int) -> None:
    """The time falls where the store has no deltas: when those revisions were written is unknown."""
    raise TargetOutOfRange(f"{store.display}: --to-time={format_time(when)} falls after revision {known} and before "
                           f"revision {upto} at the latest, and no delta holds the revisions between them, so when "
                           f"they were written is not known; the revisions this store can restore to are "
                           f"{describe_ranges(available_ranges(snapshots))}")


def chain_for(store, target: Target, snapshots: list[Snapshot] | None = None):
    """The chain of ``store`` that reaches ``target`` (TargetOutOfRange otherwise)."""
    snaps = store.list() if snapshots is None else snapshots
    revision = target.revision if target.revision is not None else None
    if revision is None:
        assert target.time is not None
        revision = resolve_time(store, snaps, target.time)
    return plan(snaps, revision, store.display)
