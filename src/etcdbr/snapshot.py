"""The snapshot model: what an object name says, parsed once into a frozen value.

Object names carry all metadata (kind, revisions, creation time, compression, final flag), so a
bucket listing is the index. The layout and naming are those of the Go etcd-backup-restore, so
buckets written by either tool are read by the other:

* v2 (current): ``<prefix>/v2/<Kind>-<start:08d>-<last:08d>-<unix><suffix>[.final]``;
  chunk pieces one level below the snapshot name: ``<prefix>/v2/<name>/<part:010d>``.
* v1 (legacy, read and delete only): ``<prefix>/v1/Backup-<unix>/<name>``.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterable, Sequence

log = logging.getLogger(__name__)

FINAL_SUFFIX = ".final"
LAYOUT_V1 = "v1"
LAYOUT_V2 = "v2"
ZERO_TIME = datetime(1, 1, 1, tzinfo=timezone.utc)


class Kind(str, enum.Enum):
    FULL = "Full"
    INCR = "Incr"
    CHUNK = "Chunk"


class SnapshotNameError(ValueError):
    """A key that is not a snapshot of ours or the Go tool's."""


@dataclass(frozen=True, order=False)
class Snapshot:
    kind: Kind
    start_revision: int
    last_revision: int
    created_on: datetime
    compression_suffix: str = ""
    is_final: bool = False
    is_chunk: bool = False
    # ``prefix`` ends with the layout component (``.../v2``); ``snap_dir`` is empty in v2.
    prefix: str = LAYOUT_V2
    snap_dir: str = ""
    # Set by listings only: how big the object is, and what the store knows about it.
    size: int | None = field(default=None, compare=False)
    immutable_until: datetime | None = field(default=None, compare=False)
    version_id: str = field(default="", compare=False)
    # For chunk objects: the part's own name below the snapshot name.
    chunk_name: str = field(default="", compare=False)

    # -- naming -----------------------------------------------------------------------------
    @property
    def snap_name(self) -> str:
        kind = Kind.FULL if self.kind is Kind.FULL else Kind.INCR if self.kind is Kind.INCR else None
        if kind is None:  # a chunk keeps the kind of the snapshot it belongs to in its name
            kind = Kind.FULL if self.start_revision == 0 else Kind.INCR
        name = (
            f"{kind.value}-{self.start_revision:08d}-{self.last_revision:08d}-"
            f"{int(self.created_on.timestamp())}{self.compression_suffix}"
        )
        return name + FINAL_SUFFIX if self.is_final else name

    @property
    def key(self) -> str:
        """The object's full key inside its container."""
        parts = [p for p in (self.prefix, self.snap_dir, self.snap_name, self.chunk_name) if p]
        return "/".join(parts)

    @property
    def created_unix(self) -> int:
        return int(self.created_on.timestamp())

    @property
    def is_full(self) -> bool:
        return self.kind is Kind.FULL

    @property
    def is_delta(self) -> bool:
        return self.kind is Kind.INCR

    def copier_key(self) -> str:
        """``{directory}/{name}:{start}-{end}`` with ``.final`` stripped, so a copy made without the
        suffix (as the Go copier writes it, and as a WORM bucket can only take it once) matches."""
        name = self.snap_name
        if name.endswith(FINAL_SUFFIX):
            name = name[: -len(FINAL_SUFFIX)]
        return f"{self.snap_dir}/{name}:{self.start_revision}-{self.last_revision}"

    def is_deletable(self, now: datetime | None = None) -> bool:
        if self.immutable_until is None:
            return True
        return (now or datetime.now(timezone.utc)) > self.immutable_until

    def with_prefix(self, prefix: str) -> "Snapshot":
        """The same snapshot placed under another store prefix (for copies between stores)."""
        return replace(self, prefix=prefix, size=None, immutable_until=None, version_id="")

    def to_json(self) -> dict:
        """The Go tool's Snapshot JSON shape (HTTP API), misspelt field included."""
        return {
            "kind": self.kind.value,
            "startRevision": self.start_revision,
            "lastRevision": self.last_revision,
            "createdOn": _go_time(self.created_on),
            "snapDir": self.snap_dir,
            "snapName": self.snap_name,
            "isChunk": self.is_chunk,
            "prefix": self.prefix,
            "compressionSuffix": self.compression_suffix,
            "isFinal": self.is_final,
            "immutabilityExpriyTime": _go_time(self.immutable_until or ZERO_TIME),
            "versionID": self.version_id or None,
        }


def _go_time(t: datetime) -> str:
    t = t.astimezone(timezone.utc)
    # %Y is not zero-padded for years < 1000 on every libc; Go's zero time is 0001-01-01.
    text = f"{t.year:04d}" + t.strftime("-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond:06d}".rstrip("0")
    return text + "Z"


def new_snapshot(
    kind: Kind,
    start_revision: int,
    last_revision: int,
    *,
    prefix: str,
    compression_suffix: str = "",
    is_final: bool = False,
    created_on: datetime | None = None,
) -> Snapshot:
    """A snapshot about to be written: created now, v2 layout, in ``prefix`` (which ends in v2)."""
    if kind is Kind.FULL and start_revision != 0:
        raise ValueError("a full snapshot starts at revision 0")
    if start_revision > last_revision:
        raise ValueError(f"start revision {start_revision} > last revision {last_revision}")
    created = (created_on or datetime.now(timezone.utc)).replace(microsecond=0)
    return Snapshot(
        kind=kind,
        start_revision=start_revision,
        last_revision=last_revision,
        created_on=created,
        compression_suffix=compression_suffix,
        is_final=is_final,
        prefix=prefix,
    )


def _is_decimal(text: str) -> bool:
    """ASCII digits only, as Go's strconv accepts (``str.isdigit`` also takes ``²`` and ``١``)."""
    return text.isascii() and text.isdigit()


def parse_name(name: str) -> tuple[Kind, int, int, datetime, str, bool]:
    """Parse ``<Kind>-<start>-<last>-<unix><suffix>[.final]``."""
    tokens = name.split("-")
    if len(tokens) != 4:
        raise SnapshotNameError(f"{name!r}: expected 4 '-'-separated fields")
    kind_text, start_text, last_text, rest = tokens
    try:
        kind = Kind(kind_text)
    except ValueError:
        raise SnapshotNameError(f"{name!r}: unknown kind {kind_text!r}") from None
    if kind is Kind.CHUNK:
        raise SnapshotNameError(f"{name!r}: unknown kind {kind_text!r}")
    if not (_is_decimal(start_text) and _is_decimal(last_text)):
        raise SnapshotNameError(f"{name!r}: revisions must be decimal numbers")
    start, last = int(start_text), int(last_text)
    if start > last:
        raise SnapshotNameError(f"{name!r}: start revision {start} > last revision {last}")
    pieces = rest.split(".")
    if not _is_decimal(pieces[0]):
        raise SnapshotNameError(f"{name!r}: creation time {pieces[0]!r} is not a unix time")
    try:
        created = datetime.fromtimestamp(int(pieces[0]), tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        # One stray object must never break the listing of the others.
        raise SnapshotNameError(f"{name!r}: creation time {pieces[0]!r} is out of range") from None
    is_final = len(pieces) > 1 and pieces[-1] == "final"
    middle = pieces[1:-1] if is_final else pieces[1:]
    if len(middle) > 1 or (middle and not middle[0]):
        raise SnapshotNameError(f"{name!r}: cannot tell the compression suffix")
    suffix = "." + middle[0] if middle else ""
    return kind, start, last, created, suffix, is_final


def parse_key(key: str) -> Snapshot:
    """Parse an object key of either layout. Raises :class:`SnapshotNameError`."""
    parts = key.strip("/").split("/")
    # The last layout component wins; v1 is preferred when both appear (as the Go tool does).
    layout_index = None
    for layout in (LAYOUT_V1, LAYOUT_V2):
        indices = [i for i, p in enumerate(parts) if p == layout]
        if indices:
            layout_index = indices[-1]
            break
    if layout_index is None:
        raise SnapshotNameError(f"{key!r}: no v1/ or v2/ layout component")
    layout = parts[layout_index]
    prefix = "/".join(parts[: layout_index + 1])
    rest = parts[layout_index + 1 :]
    snap_dir, chunk_name = "", ""
    if layout == LAYOUT_V1:
        if len(rest) not in (2, 3):
            raise SnapshotNameError(f"{key!r}: v1 keys are Backup-<unix>/<name>[/<part>]")
        snap_dir, name = rest[0], rest[1]
        chunk_name = rest[2] if len(rest) == 3 else ""
    else:
        if len(rest) not in (1, 2):
            raise SnapshotNameError(f"{key!r}: v2 keys are <name>[/<part>]")
        name = rest[0]
        chunk_name = rest[1] if len(rest) == 2 else ""
    kind, start, last, created, suffix, is_final = parse_name(name)
    is_chunk = bool(chunk_name)
    return Snapshot(
        kind=Kind.CHUNK if is_chunk else kind,
        start_revision=start,
        last_revision=last,
        created_on=created,
        compression_suffix=suffix,
        is_final=is_final,
        is_chunk=is_chunk,
        prefix=prefix,
        snap_dir=snap_dir,
        chunk_name=chunk_name,
    )


def sort_key(s: Snapshot) -> tuple:
    # The Go order (last revision, non-chunk first, creation time), with one tie-break added: a
    # full snapshot sorts after a delta ending at the same revision, because the full supersedes
    # it (both can carry the same creation second when a full is taken right after a delta).
    return (s.last_revision, s.is_chunk, s.kind is Kind.FULL, s.created_on)


def parse_listing(keys: Iterable[tuple[str, dict]], *, endpoint: str = "") -> list[Snapshot]:
    """Turn ``(key, attributes)`` pairs of a listing into sorted snapshots.

    Attributes may carry ``size``, ``immutable_until`` and ``version_id``. Keys outside the
    v1/v2 trees are ignored silently (they are not ours); keys inside them that do not parse are
    skipped with a warning so that one stray object never hides the others.
    """
    result = []
    for key, attrs in keys:
        parts = key.strip("/").split("/")
        if LAYOUT_V1 not in parts and LAYOUT_V2 not in parts:
            continue
        try:
            snap = parse_key(key)
        except SnapshotNameError as exc:
            log.warning("skipping object that is not a snapshot", extra={"store": endpoint, "reason": str(exc)})
            continue
        if attrs:
            snap = replace(snap, **{k: v for k, v in attrs.items() if v is not None})
        result.append(snap)
    result.sort(key=sort_key)
    return result


def latest_chain(snapshots: Sequence[Snapshot]) -> tuple[Snapshot | None, list[Snapshot]]:
    """The latest full snapshot and the deltas that follow it, ascending (what a restore needs)."""
    deltas: list[Snapshot] = []
    for snap in reversed(sorted(snapshots, key=sort_key)):
        if snap.is_chunk:
            continue
        if snap.kind is Kind.FULL:
            deltas.sort(key=sort_key)
            return snap, deltas
        deltas.append(snap)
    return None, []


def chain_gaps(full: Snapshot | None, deltas: Sequence[Snapshot]) -> list[tuple[int, int]]:
    """Revision ranges missing between consecutive members of a chain: ``[(expected, found)]``."""
    gaps: list[tuple[int, int]] = []
    if full is None:
        return gaps
    expected = full.last_revision + 1
    for delta in deltas:
        if delta.start_revision > expected:
            gaps.append((expected, delta.start_revision))
        expected = max(expected, delta.last_revision + 1)
    return gaps
