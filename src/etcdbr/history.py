"""The events a store's delta snapshots hold, read as a stream: ``snapshot history`` and the
time-to-revision lookup of a point-in-time restore.

Every delta is read through the decompressor and :func:`.delta.iter_delta_events`, never whole,
so memory stays flat whatever the chain's size (one read chunk plus the largest event; the
matches of one delta are held until its trailer is checked). The checks are ``verify``'s for a
delta: the SHA-256 trailer over the JSON, and every event inside the revisions the object's name
claims, the last one exactly at its last revision. An event of a delta is only reported once the
whole delta has passed them.

Full snapshots hold no history: the events between two fulls are only known while the deltas
between them are kept (garbage collection usually keeps those of the latest full only). The
revisions a search could not see are reported as gaps.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime

from .delta import Event, EventType, iter_delta_events, parse_go_time
from .errors import EtcdbrError, IntegrityError
from .snapshot import Snapshot, sort_key
from .verify import decompressed_chunks

#: How long after its events a delta can at most have been named (its name carries its upload
#: time, truncated to the second; its events were recorded before it was cut). A delta named
#: more than this before a time bound is known to hold only earlier events and is not read when
#: a search only needs to know that. Generous, so that a clock step between the two is covered.
NAME_TIME_SLACK_SECONDS = 60


class HistoryError(EtcdbrError):
    """A delta that fails its checks while its events are searched (exit 1)."""


def _chunks(store, snap: Snapshot) -> Iterator[bytes]:
    raw = store.fetch(snap)
    try:
        yield from decompressed_chunks(raw, snap.compression_suffix)
    finally:
        raw.close()


def delta_events(store, snap: Snapshot) -> Iterator[Event]:
    """The events of one delta, streamed, with ``verify``'s checks (IntegrityError naming the object
    at the first failure; events already yielded must then be discarded by the caller)."""
    where = f"{store.display} object {snap.key}"
    last = None
    try:
        for event in iter_delta_events(_chunks(store, snap)):
            rev = event.kv.mod_revision
            if not snap.start_revision <= rev <= snap.last_revision:
                raise IntegrityError(f"event at revision {rev} outside the revisions the name says "
                                     f"({snap.start_revision}..{snap.last_revision})")
            last = rev
            yield event
    except IntegrityError as exc:
        raise HistoryError(f"delta snapshot {where} failed verification: {exc}") from None
    if last is None:
        raise HistoryError(f"delta snapshot {where} failed verification: it holds no events but its name says "
                           f"revisions {snap.start_revision}..{snap.last_revision}")
    if last != snap.last_revision:
        raise HistoryError(f"delta snapshot {where} failed verification: its last event is at revision {last}, "
                           f"the name says {snap.last_revision}")


def event_time(event: Event, snap: Snapshot) -> datetime:
    try:
        return parse_go_time(event.time)
    except ValueError:
        raise HistoryError(f"delta snapshot {snap.key}: the event at revision {event.kv.mod_revision} has no valid "
                           f"time ({event.time!r})") from None


def deltas_of(snapshots: list[Snapshot]) -> list[Snapshot]:
    return sorted((s for s in snapshots if s.is_delta and not s.is_chunk), key=sort_key)


# -- the search ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Window:
    """What to search for: a key (or every key under it with ``prefix``), within revisions and times
    (bounds inclusive; None: open)."""

    key: bytes
    prefix: bool = False
    from_revision: int | None = None
    to_revision: int | None = None
    from_time: datetime | None = None
    to_time: datetime | None = None

    def matches_key(self, key: bytes) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key


@dataclass(frozen=True)
class Match:
    revision: int
    time: str
    operation: str  # put | delete
    key: bytes
    value: bytes
    create_revision: int
    version: int
    snapshot: str

    def to_json(self, *, values: bool) -> dict:
        row = {"revision": self.revision, "time": self.time, "operation": self.operation,
               "key": safe_text(self.key), "key_base64": base64.b64encode(self.key).decode("ascii"),
               "value_size": len(self.value), "create_revision": self.create_revision, "version": self.version,
               "snapshot": self.snapshot}
        if values:
            row["value"] = safe_text(self.value)
            row["value_base64"] = base64.b64encode(self.value).decode("ascii")
        return row


@dataclass
class HistoryResult:
    matches: list[Match] = field(default_factory=list)
    deltas_read: int = 0
    events_read: int = 0
    #: the revision ranges (inclusive) of the window no delta of the store covers
    gaps: list[tuple[int, int]] = field(default_factory=list)
    #: first and last revision the deltas read cover (None: none read)
    covered: tuple[int, int] | None = None


def safe_text(data: bytes) -> str:
    """Bytes as printable text: UTF-8 where it is, escapes (``\\xNN``) for the rest and for control
    characters, so that a key or value can never move a terminal's cursor or forge a line."""
    text = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _could_hold(snap: Snapshot, window: Window) -> bool:
    if window.from_revision is not None and snap.last_revision < window.from_revision:
        return False
    if window.to_revision is not None and snap.start_revision > window.to_revision:
        return False
    if window.from_time is not None and (snap.created_on - window.from_time).total_seconds() < -NAME_TIME_SLACK_SECONDS:
        return False  # named well before the window opens: all its events are earlier
    return True


def search(store, window: Window, *, snapshots: list[Snapshot] | None = None, result: HistoryResult | None = None,
           on_delta=None) -> Iterator[Match]:
    """The events in the store's deltas that match ``window``, in revision order, each once (a
    revision held by two deltas is reported from the first). Yields a delta's matches once the
    delta has passed its checks; ``result`` (when given) counts what was read. ``on_delta(snapshot,
    events_read)`` is called after each delta."""
    yield from _search(store, window, snapshots if snapshots is not None else store.list(),
                       result if result is not None else HistoryResult(), on_delta)


def _search(store, window: Window, snapshots: list[Snapshot], result: HistoryResult, on_delta) -> Iterator[Match]:
    seen = 0  # the highest revision reported or passed over so far
    for snap in deltas_of(snapshots):
        if not _could_hold(snap, window) or snap.last_revision <= seen:
            continue
        found: list[Match] = []
        count = 0
        stop = False
        for event in delta_events(store, snap):
            count += 1
            rev = event.kv.mod_revision
            if rev <= seen or (window.from_revision is not None and rev < window.from_revision):
                continue
            if window.to_revision is not None and rev > window.to_revision:
                stop = True  # read on to the end: the delta's trailer must still check out
                continue
            if not window.matches_key(event.kv.key):
                continue
            if window.from_time is not None or window.to_time is not None:
                when = event_time(event, snap)
                if window.from_time is not None and when < window.from_time:
                    continue
                if window.to_time is not None and when > window.to_time:
                    continue
            found.append(Match(revision=rev, time=event.time,
                               operation="delete" if event.type == EventType.DELETE else "put",
                               key=event.kv.key, value=event.kv.value, create_revision=event.kv.create_revision,
                               version=event.kv.version, snapshot=snap.snap_name))
        first = result.covered[0] if result.covered else snap.start_revision
        result.covered = (first, max(seen, snap.last_revision))
        seen = max(seen, snap.last_revision)
        result.deltas_read += 1
        result.events_read += count
        if on_delta is not None:
            on_delta(snap, count)
        yield from found
        if stop:
            return


def coverage_gaps(snapshots: list[Snapshot], low: int, high: int | None) -> list[tuple[int, int]]:
    """Revision ranges within ``[low, high]`` (``high`` None: up to the last delta) that no delta
    of ``snapshots`` covers; revision ranges before the first delta count as well."""
    gaps: list[tuple[int, int]] = []
    expected = max(low, 1)
    end = high
    for snap in deltas_of(snapshots):
        if end is not None and snap.start_revision > end:
            break
        if snap.start_revision > expected:
            gaps.append((expected, snap.start_revision - 1))
        expected = max(expected, snap.last_revision + 1)
    if end is not None and expected <= end:
        gaps.append((expected, end))
    return gaps
