"""Verify one store on its own: every object read back, every check the format allows.

What is checked (pgBackRest's ``verify`` is the model: a repository checked without the database):

* every key under the store's prefix parses as a snapshot name (``unparseable-name`` otherwise);
* every object decompresses by its suffix (``unknown-suffix``, ``undecodable``);
* a full snapshot ends with etcd's 32-byte SHA-256 trailer over the rest (``hash-mismatch``,
  ``truncated`` when the trailer cannot be there);
* a delta ends with the SHA-256 of its JSON events, the JSON parses, and its events lie within the
  revisions its name claims, the last one exactly at its last revision (``revision-mismatch``);
* chains are contiguous: each delta starts right after what precedes it (``gap``, ``overlap``),
  and no delta comes before every full snapshot (``no-base``);
* no chunk pieces are left over from multipart uploads (``leftover-chunk``);
* an object listed but gone by the time it is read (``vanished``) or unreadable (``unreadable``).

Leftovers of interrupted uploads in the store's staging area (a Local store's
``.etcdbr-staging/upload-*`` files) are listed with their age, and whether the next start of a
writing command sweeps them, but are no defect: no snapshot is affected, and a recent one may
belong to an upload still running. ``verify`` never removes anything.

Memory stays bounded: objects are streamed through the decompressor and hasher, never held whole,
except deltas up to :data:`DELTA_PARSE_LIMIT` bytes whose events are parsed; at most ``parallel``
objects are read at once.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import BinaryIO, Iterable, Iterator

from .delta import TrailerHash
from .errors import EtcdbrError, IntegrityError, ObjectNotFound, StoreError, StoreUnavailable
from .snapshot import LAYOUT_V1, LAYOUT_V2, Kind, Snapshot, SnapshotNameError, parse_key, sort_key

log = logging.getLogger(__name__)

HASH_SIZE = 32
_BLOCK = 512
READ_SIZE = 1 << 20
#: Deltas whose JSON is at most this big are parsed to check their revisions; larger ones only
#: have their hash checked (the snapshotter cuts deltas at --delta-snapshot-memory-limit, 10 MiB by
#: default; parsed events take several times their JSON size, so the bound is kept close to it).
DELTA_PARSE_LIMIT = 16 * 1024 * 1024
DEFAULT_PARALLEL = 4

# Defect kinds, in the order a report lists them.
DEFECT_KINDS = (
    "unparseable-name", "unknown-suffix", "undecodable", "truncated", "hash-mismatch", "revision-mismatch",
    "unreadable", "vanished", "no-base", "gap", "overlap", "leftover-chunk",
)


@dataclass
class Defect:
    kind: str
    key: str
    message: str


@dataclass
class ObjectResult:
    key: str
    kind: str
    start_revision: int | None
    last_revision: int | None
    size: int | None
    status: str = "ok"           # ok | defect | skipped
    detail: str = ""
    sha256: str = ""             # the payload hash the object carries, when checked
    decompressed_size: int | None = None


@dataclass
class ChainResult:
    full: str
    first_revision: int
    last_revision: int
    deltas: int
    contiguous: bool


@dataclass
class VerifyReport:
    store: str
    prefix: str
    objects: list[ObjectResult] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    chains: list[ChainResult] = field(default_factory=list)
    seconds: float = 0.0
    content_checked: bool = True
    leftovers: list = field(default_factory=list)   # snapstore.base.Leftover

    @property
    def ok(self) -> bool:
        return not self.defects

    def to_json(self) -> dict:
        return {
            "store": self.store,
            "prefix": self.prefix,
            "ok": self.ok,
            "contentChecked": self.content_checked,
            "seconds": round(self.seconds, 3),
            "objects": [asdict(o) for o in self.objects],
            "defects": [asdict(d) for d in self.defects],
            "chains": [asdict(c) for c in self.chains],
            "uploadLeftovers": [{"key": x.key, "ageSeconds": round(x.age, 1), "size": x.size,
                                 "abandoned": x.abandoned} for x in self.leftovers],
        }

    def render(self) -> str:
        """A human report: one row per object, then the chains, then every defect by name."""
        lines = [f"{self.store} prefix {self.prefix}: {len(self.objects)} object(s) verified in {self.seconds:.1f}s"
                 + ("" if self.content_checked else " (names only)")]
        header = ("STATUS", "KIND", "START", "LAST", "SIZE", "KEY", "DETAIL")
        rows = [
            (o.status.upper(), o.kind, _num(o.start_revision), _num(o.last_revision), _num(o.size), o.key, o.detail)
            for o in self.objects
        ]
        if rows:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
            for r in [header, *rows]:
                cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]
                lines.append("  ".join(cells).rstrip())
        if self.chains:
            lines.append("")
            lines.append("chains:")
            for c in self.chains:
                state = "contiguous" if c.contiguous else "BROKEN"
                lines.append(f"  {c.full}: revisions {c.first_revision}..{c.last_revision}, "
                             f"{c.deltas} delta(s), {state}")
        if self.leftovers:
            lines.append("")
            lines.append(f"{len(self.leftovers)} leftover(s) of interrupted uploads (no defect):")
            for x in self.leftovers:
                state = ("abandoned: the next start of server, snapshot or copy removes it" if x.abandoned
                         else "recent or locked: may belong to an upload still running")
                lines.append(f"  {x.key}: {_num(x.size)} bytes, last written {x.age:.0f}s ago, {state}")
        lines.append("")
        if self.defects:
            lines.append(f"{len(self.defects)} defect(s):")
            for d in self.defects:
                lines.append(f"  {d.kind}: {d.key}: {d.message}")
        else:
            lines.append("no defects")
        return "\n".join(lines)


def _num(v: int | None) -> str:
    return "-" if v is None else str(v)


# -- content checks (one object) ------------------------------------------------------------------
def _open_decompressed(raw: BinaryIO, suffix: str) -> BinaryIO:
    from .compression import decompressing_reader

    return decompressing_reader(raw, suffix)


def read_decompressed(stream: BinaryIO, suffix: str, sink) -> None:
    """Feed the decompressed bytes of ``stream`` to ``sink`` chunk by chunk; codec failures are
    IntegrityError (the bytes are not what the name's suffix says)."""
    _read_all(_open_decompressed(stream, suffix), sink)


def decompressed_chunks(stream: BinaryIO, suffix: str) -> Iterator[bytes]:
    """The decompressed bytes of ``stream``, chunk by chunk, with ``read_decompressed``'s errors."""
    return _chunks_of(_open_decompressed(stream, suffix))


def _chunks_of(reader: BinaryIO) -> Iterator[bytes]:
    while True:
        try:
            chunk = reader.read(READ_SIZE)
        except (StoreError, IntegrityError):
            raise
        except EOFError as exc:
            raise IntegrityError(f"truncated compressed stream ({exc})") from exc
        except Exception as exc:  # codec errors of any library: the bytes are not what the suffix says
            raise IntegrityError(f"cannot decompress: {type(exc).__name__}: {exc}") from exc
        if not chunk:
            return
        yield chunk


def _read_all(reader: BinaryIO, sink) -> None:
    for chunk in _chunks_of(reader):
        sink(chunk)


def check_full(stream: BinaryIO, suffix: str) -> tuple[int, str]:
    """Check a full snapshot's trailer. Returns (decompressed size, trailer hex). Raises IntegrityError."""
    hasher = TrailerHash()
    _read_all(_open_decompressed(stream, suffix), hasher.feed)
    if len(hasher.tail) < HASH_SIZE or hasher.size % _BLOCK != HASH_SIZE:
        raise _Truncated(f"SHA256 hash seems to be missing ({hasher.size} bytes after decompression; "
                         f"an etcd snapshot is a whole number of 512-byte pages plus a 32-byte trailer)")
    got = hasher.hash.digest()
    if got != hasher.tail:
        raise _HashMismatch(f"expected sha256 {hasher.tail.hex()}, got {got.hex()}")
    return hasher.size, hasher.tail.hex()


def check_delta(stream: BinaryIO, suffix: str, start: int, last: int) -> tuple[int, str, int]:
    """Check a delta's hash and revisions. Returns (decompressed size, hash hex, events)."""
    hasher = TrailerHash()
    kept: list[bytes] = []
    kept_size = 0

    def sink(chunk: bytes) -> None:
        nonlocal kept_size
        hasher.feed(chunk)
        if kept_size <= DELTA_PARSE_LIMIT:
            kept.append(chunk)
            kept_size += len(chunk)

    _read_all(_open_decompressed(stream, suffix), sink)
    if hasher.size <= HASH_SIZE:
        raise _Truncated(f"delta of {hasher.size} bytes cannot hold events and their sha256")
    got = hasher.hash.digest()
    if got != hasher.tail:
        raise _HashMismatch(f"expected sha256 {hasher.tail.hex()}, got {got.hex()}")
    if kept_size > DELTA_PARSE_LIMIT:
        return hasher.size, hasher.tail.hex(), -1
    payload = b"".join(kept)
    kept.clear()
    revisions = _event_revisions(payload)
    if revisions:
        low, high = min(revisions), max(revisions)
        if low < start or high > last or revisions[-1] != last:
            raise _RevisionMismatch(
                f"events span revisions {low}..{high} (last {revisions[-1]}) but the name says {start}..{last}")
    else:  # the snapshotter never writes an empty delta
        raise _RevisionMismatch(f"delta holds no events but its name says revisions {start}..{last}")
    return hasher.size, hasher.tail.hex(), len(revisions)


def _event_revisions(payload: bytes) -> list[int]:
    """Mod revisions of a delta's events, parsed by the same decoder restore uses."""
    from .delta import decode_delta

    try:
        events = decode_delta(payload)
    except IntegrityError as exc:
        raise _Undecodable(str(exc)) from None
    return [e.kv.mod_revision for e in events]


class _Classified(IntegrityError):
    kind = "undecodable"


class _Truncated(_Classified):
    kind = "truncated"


class _HashMismatch(_Classified):
    kind = "hash-mismatch"


class _RevisionMismatch(_Classified):
    kind = "revision-mismatch"


class _Undecodable(_Classified):
    kind = "undecodable"


def _classify(exc: BaseException) -> str:
    if isinstance(exc, _Classified):
        return exc.kind
    text = str(exc)
    if "unknown compression suffix" in text:
        return "unknown-suffix"
    if "truncated" in text:
        return "truncated"
    return "undecodable"


# -- the store walk -------------------------------------------------------------------------------
def _own_prefixes(prefix_v2: str) -> tuple[str, ...]:
    head = prefix_v2[: -len(LAYOUT_V2)]
    return (prefix_v2, head + LAYOUT_V1)


def list_keys(store) -> Iterable[tuple[str, object]]:
    """Every object under the store's listing root with what the listing knows about it.

    The store's own ``list()`` drops keys that do not parse (so one stray object never hides the
    others from a restore); verify needs to see them.
    """
    return store.objects()


def verify_store(store, *, parallel: int = DEFAULT_PARALLEL, check_content: bool = True,
                 stop: threading.Event | None = None) -> VerifyReport:
    """Read and check every object of ``store``. Store errors other than a vanished object abort
    (an unreachable store is never reported as a clean or empty one)."""
    t0 = time.monotonic()
    report = VerifyReport(store=store.display, prefix=store.prefix, content_checked=check_content)
    own = _own_prefixes(store.prefix)
    snaps: list[Snapshot] = []
    for key, attrs in list_keys(store):
        if not any(key == p or key.startswith(p + "/") for p in own):
            continue  # another prefix's tree, or not ours at all
        size = getattr(attrs, "size", None)
        try:
            snap = parse_key(key)
        except SnapshotNameError as exc:
            report.objects.append(ObjectResult(key, "?", None, None, size, "defect", str(exc)))
            report.defects.append(Defect("unparseable-name", key, f"not a snapshot name ({exc})"))
            continue
        if snap.prefix not in own:
            continue
        snaps.append(replace(snap, size=size, version_id=getattr(attrs, "version_id", "") or ""))
    snaps.sort(key=sort_key)

    results: dict[str, ObjectResult] = {}
    for s in snaps:
        results[s.key] = ObjectResult(s.key, s.kind.value, s.start_revision, s.last_revision, s.size,
                                      "ok" if check_content else "skipped")
        if s.is_chunk:
            results[s.key].status = "defect"
            results[s.key].detail = "leftover chunk of a multipart upload"
            report.defects.append(Defect("leftover-chunk", s.key,
                                         "a piece of an upload that never completed or was not cleaned up"))

    if check_content:
        _check_contents(store, [s for s in snaps if not s.is_chunk], results, report, parallel, stop)

    report.chains = _check_chains([s for s in snaps if not s.is_chunk], report)
    report.leftovers = store.staging_leftovers()
    unparseable = [o for o in report.objects if o.kind == "?"]
    report.objects = unparseable + [results[s.key] for s in snaps]
    order = {k: i for i, k in enumerate(DEFECT_KINDS)}
    report.defects.sort(key=lambda d: (order.get(d.kind, 99), d.key))
    report.seconds = time.monotonic() - t0
    return report


def _check_one(store, snap: Snapshot) -> tuple[int, str, str]:
    """Returns (decompressed size, hash hex, extra detail)."""
    raw = store.fetch(snap)
    try:
        if snap.kind is Kind.FULL:
            size, digest = check_full(raw, snap.compression_suffix)
            return size, digest, ""
        size, digest, events = check_delta(raw, snap.compression_suffix, snap.start_revision, snap.last_revision)
        return size, digest, f"{events} event(s)" if events >= 0 else "too large to parse; hash checked"
    finally:
        try:
            raw.close()
        except Exception:  # noqa: BLE001 - closing a broken stream must not hide why it broke
            pass


def _check_contents(store, snaps: list[Snapshot], results: dict[str, ObjectResult], report: VerifyReport,
                    parallel: int, stop: threading.Event | None) -> None:
    lock = threading.Lock()
    fatal: list[BaseException] = []

    def work(snap: Snapshot) -> None:
        if fatal or (stop is not None and stop.is_set()):
            return
        result = results[snap.key]
        try:
            size, digest, detail = _check_one(store, snap)
        except ObjectNotFound:
            with lock:
                result.status, result.detail = "defect", "listed but gone when read"
                report.defects.append(Defect("vanished", snap.key,
                                             "listed but not found when read (deleted meanwhile?)"))
            return
        except IntegrityError as exc:
            kind = _classify(exc)
            with lock:
                result.status, result.detail = "defect", f"{kind}: {exc}"
                report.defects.append(Defect(kind, snap.key, str(exc)))
            return
        except StoreUnavailable as exc:
            with lock:
                fatal.append(exc)
            return
        except StoreError as exc:
            with lock:
                result.status, result.detail = "defect", f"unreadable: {exc.reason}"
                report.defects.append(Defect("unreadable", snap.key, exc.reason))
            return
        except EtcdbrError as exc:
            with lock:
                result.status, result.detail = "defect", str(exc)
                report.defects.append(Defect("undecodable", snap.key, str(exc)))
            return
        with lock:
            result.decompressed_size, result.sha256, result.detail = size, digest, detail

    # Bounded in both threads and memory: each worker holds one object's read buffer at a time.
    with ThreadPoolExecutor(max(1, parallel), thread_name_prefix="verify") as pool:
        for future in [pool.submit(work, s) for s in snaps]:
            future.result()
    if fatal:
        raise fatal[0]
    if stop is not None and stop.is_set():
        raise EtcdbrError("verify interrupted")


def _check_chains(snaps: list[Snapshot], report: VerifyReport) -> list[ChainResult]:
    chains: list[ChainResult] = []
    current: ChainResult | None = None
    expected: int | None = None
    for s in snaps:  # sorted by last revision, fulls and deltas interleaved as written
        if s.kind is Kind.FULL:
            current = ChainResult(s.key, s.last_revision, s.last_revision, 0, True)
            chains.append(current)
            expected = s.last_revision + 1
            continue
        if current is None or expected is None:
            report.defects.append(Defect("no-base", s.key, "delta snapshot with no full snapshot before it"))
            continue
        if s.start_revision > expected:
            current.contiguous = False
            report.defects.append(Defect("gap", s.key, f"revisions {expected}..{s.start_revision - 1} are in no "
                                                       f"snapshot (chain of {current.full})"))
        elif s.start_revision < expected:
            current.contiguous = False
            report.defects.append(Defect("overlap", s.key,
                                         f"starts at {s.start_revision} but revisions up to {expected - 1} "
                                         f"are already in the chain of {current.full}"))
        current.deltas += 1
        current.last_revision = max(current.last_revision, s.last_revision)
        expected = max(expected, s.last_revision + 1)
    return chains


__all__ = ["Defect", "ObjectResult", "ChainResult", "VerifyReport", "verify_store", "check_full", "check_delta"]
