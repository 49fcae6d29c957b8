"""Delta (incremental) snapshot payloads, byte-compatible with the Go etcd-backup-restore.

Before compression a delta snapshot is a JSON array of timed watch events immediately followed
by the raw 32-byte SHA-256 of the JSON text::

    [{"etcdEvent":{...},"time":"..."},{...}]<sha256 of everything before it>

Each element is Go's ``json.Marshal`` of ``struct{EtcdEvent *clientv3.Event; Time time.Time}``.
``clientv3.Event`` is mvccpb.Event, whose generated JSON tags all carry ``omitempty``, so zero
fields disappear and ``type`` is the bare enum number (PUT=0 is therefore omitted).  We write
exactly the bytes Go writes for the same event, and read anything Go's decoder would accept.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import json
import re
import time as _time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

from .errors import IntegrityError

__all__ = [
    "EventType",
    "KeyValue",
    "Event",
    "DeltaEncoder",
    "encode_event",
    "encode_delta",
    "decode_delta",
    "iter_delta_events",
    "format_go_time",
    "go_time_now",
    "GoTimeStamper",
    "encode_watch_event",
    "parse_go_time",
    "SHA256_SIZE",
]

SHA256_SIZE = 32
_INT64_MIN = -(1 << 63)
_INT64_MAX = (1 << 63) - 1


class EventType(enum.IntEnum):
    PUT = 0
    DELETE = 1


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes = b""
    create_revision: int = 0
    mod_revision: int = 0
    version: int = 0
    lease: int = 0


@dataclass(frozen=True)
class Event:
    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None
    # RFC 3339 with nanoseconds, as Go's time.Time marshals; "" = stamp when encoding.
    time: str = ""


# -- Go time formatting ----------------------------------------------------------------------

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))"
)


def format_go_time(dt: datetime, nanosecond: int | None = None) -> str:
    """``dt`` as Go's ``time.RFC3339Nano``: trailing fraction zeros dropped, "Z" for UTC.

    A naive ``dt`` is taken as local time.  ``nanosecond`` (0..999999999) replaces the
    sub-second part when given, since ``datetime`` only holds microseconds.
    """
    if dt.tzinfo is None:
        dt = dt.astimezone()
    ns = dt.microsecond * 1000 if nanosecond is None else nanosecond
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if ns:
        text += "." + f"{ns:09d}".rstrip("0")
    offset = dt.utcoffset() or timedelta(0)
    if not offset:
        return text + "Z"
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{text}{sign}{hours:02d}:{mins:02d}"


def go_time_now() -> str:
    """Now, in the local zone, with nanoseconds (what Go's ``time.Now()`` marshals to)."""
    ns = _time.time_ns()
    seconds, frac = divmod(ns, 1_000_000_000)
    return format_go_time(datetime.fromtimestamp(seconds).astimezone(), frac)


class GoTimeStamper:
    """``go_time_now()`` for the watch path: the date, time and zone of a second are formatted
    once and reused for every stamp within that second (the zone can only change on a second's
    boundary), so a stamp costs a division and the fraction's formatting."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._head = ""
        self._zone = ""

    def __call__(self, ns: int | None = None) -> str:
        seconds, frac = divmod(_time.time_ns() if ns is None else ns, 1_000_000_000)
        if seconds != self._second:
            whole = format_go_time(datetime.fromtimestamp(seconds).astimezone(), 0)
            self._head, self._zone, self._second = whole[:19], whole[19:], seconds
        if frac:
            return f"{self._head}.{frac:09d}".rstrip("0") + self._zone
        return self._head + self._zone


def parse_go_time(text: str) -> datetime:
    """Parse an RFC 3339 time with any fraction length (truncated to microseconds)."""
    m = _RFC3339.fullmatch(text)
    if not m:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    if m.group(8):
        tz = timezone.utc
    else:
        delta = timedelta(hours=int(m.group(10)), minutes=int(m.group(11)))
        tz = timezone(-delta if m.group(9) == "-" else delta)
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)


# -- encoding --------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _kv_json(kv: KeyValue) -> str:
    # Field order and omitempty exactly as mvccpb.KeyValue's struct.
    fields = []
    if kv.key:
        fields.append(f'"key":"{_b64(kv.key)}"')
    if kv.create_revision:
        fields.append(f'"create_revision":{int(kv.create_revision)}')
    if kv.mod_revision:
        fields.append(f'"mod_revision":{int(kv.mod_revision)}')
    if kv.version:
        fields.append(f'"version":{int(kv.version)}')
    if kv.value:
        fields.append(f'"value":"{_b64(kv.value)}"')
    if kv.lease:
        fields.append(f'"lease":{int(kv.lease)}')
    return "{" + ",".join(fields) + "}"


def encode_event(event: Event, time: str | None = None) -> bytes:
    """One array element, byte-identical to Go's ``json.Marshal`` of the timed event."""
    stamp = time or event.time or go_time_now()
    # Checked rather than escaped: Go can only produce this shape, and it needs no escaping.
    if not _RFC3339.fullmatch(stamp):
        raise ValueError(f"event time {stamp!r} is not an RFC 3339 timestamp")
    fields = []
    if event.type:
        fields.append(f'"type":{int(event.type)}')
    if event.kv is not None:
        fields.append('"kv":' + _kv_json(event.kv))
    if event.prev_kv is not None:
        fields.append('"prev_kv":' + _kv_json(event.prev_kv))
    return ('{"etcdEvent":{' + ",".join(fields) + '},"time":"' + stamp + '"}').encode("ascii")


def encode_watch_event(deleted: bool, kv: Any, stamp: str) -> bytes:
    """:func:`encode_event` of a watch event as etcd sends it (no ``prev_kv``), straight from its
    protobuf ``kv`` (or anything with :class:`KeyValue`'s fields) and a ``stamp`` the caller made
    with :func:`format_go_time` or :class:`GoTimeStamper`: the same bytes, without building an
    :class:`Event` per event (the watch path's largest cost)."""
    return ('{"etcdEvent":{' + ('"type":1,"kv":' if deleted else '"kv":') + _kv_json(kv)
            + '},"time":"' + stamp + '"}').encode("ascii")


class DeltaEncoder:
    """Builds a delta payload incrementally, as the Go snapshotter does.

    ``size`` is the length of the JSON built so far (opening bracket and commas included,
    closing bracket not), the figure Go compares against the delta memory limit.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        # Hashing as we go keeps finish() from re-reading the whole buffer.
        self._hash = hashlib.sha256()
        self._finished = False
        self.count = 0
        self.first_revision: int | None = None
        self.last_revision: int | None = None

    @property
    def size(self) -> int:
        return len(self._buf)

    def __len__(self) -> int:
        return self.count

    def add(self, event: Event) -> int:
        """Append one event; returns the number of bytes the payload grew by."""
        return self.add_encoded(encode_event(event), event.kv.mod_revision)

    def add_encoded(self, element: bytes, revision: int) -> int:
        """Append one element :func:`encode_event` or :func:`encode_watch_event` made, of the
        event at ``revision``; returns the number of bytes the payload grew by."""
        if self._finished:
            raise RuntimeError("DeltaEncoder.add() after finish()")
        piece = (b"," if self.count else b"[") + element
        self._buf += piece
        self._hash.update(piece)
        if self.count == 0:
            self.first_revision = revision
        self.last_revision = revision
        self.count += 1
        return len(piece)

    def finish(self) -> bytes:
        """The complete payload: JSON array + its 32-byte SHA-256.  The encoder is spent after."""
        if self._finished:
            raise RuntimeError("DeltaEncoder.finish() called twice")
        self._finished = True
        # Go never writes an empty delta; "[]" keeps ours well-formed if a caller does.
        tail = b"]" if self.count else b"[]"
        self._hash.update(tail)
        self._buf += tail
        self._buf += self._hash.digest()
        payload = bytes(self._buf)
        self._buf = bytearray()
        return payload


def encode_delta(events: Iterable[Event]) -> bytes:
    enc = DeltaEncoder()
    for ev in events:
        enc.add(ev)
    return enc.finish()


# -- decoding --------------------------------------------------------------------------------
#
# Go's encoding/json matches object keys to struct fields case-insensitively, assigns them in
# document order (so the last of duplicate or differently-cased keys wins), treats null as
# "leave the zero value" and ignores unknown keys.  JSON objects are decoded to pair lists so
# the same rules can be followed here.


class _Pairs(list):
    """A JSON object as its (key, value) pairs in document order."""

_EVENT_FIELDS = {"etcdevent": "etcdEvent", "time": "time"}
_ETCD_EVENT_FIELDS = {"type": "type", "kv": "kv", "prev_kv": "prev_kv"}
_KV_FIELDS = {
    name.casefold(): name
    for name in ("key", "create_revision", "mod_revision", "version", "value", "lease")
}


def _fields(obj: Any, names: dict[str, str], where: str) -> dict[str, Any]:
    if not isinstance(obj, _Pairs):
        raise IntegrityError(f"delta snapshot: {where} is not a JSON object")
    out: dict[str, Any] = {}
    for key, value in obj:
        name = names.get(key.casefold())
        if name is not None:
            out[name] = value
    return out


def _int64(value: Any, where: str) -> int:
    if value is None:
        return 0
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        raise IntegrityError(f"delta snapshot: {where} must be a 64-bit integer, got {value!r}")
    return value


def _bytes(value: Any, where: str) -> bytes:
    if value is None:
        return b""
    if not isinstance(value, str):
        raise IntegrityError(f"delta snapshot: {where} must be a base64 string, got {value!r}")
    try:
        # Go's base64.StdEncoding skips CR and LF but is otherwise strict.
        return base64.b64decode(value.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as e:
        raise IntegrityError(f"delta snapshot: {where} is not valid base64: {e}") from None


def _kv_from_json(obj: Any, where: str) -> KeyValue | None:
    if obj is None:
        return None
    f = _fields(obj, _KV_FIELDS, where)
    return KeyValue(
        key=_bytes(f.get("key"), where + ".key"),
        value=_bytes(f.get("value"), where + ".value"),
        create_revision=_int64(f.get("create_revision"), where + ".create_revision"),
        mod_revision=_int64(f.get("mod_revision"), where + ".mod_revision"),
        version=_int64(f.get("version"), where + ".version"),
        lease=_int64(f.get("lease"), where + ".lease"),
    )


def _event_from_json(obj: Any, index: int) -> Event:
    where = f"event {index}"
    outer = _fields(obj, _EVENT_FIELDS, where)
    stamp = outer.get("time")
    if stamp is None:
        stamp = ""
    elif not isinstance(stamp, str):
        raise IntegrityError(f"delta snapshot: {where}.time must be a string, got {stamp!r}")
    inner = outer.get("etcdEvent")
    if inner is None:
        raise IntegrityError(f"delta snapshot: {where} has no etcdEvent")
    f = _fields(inner, _ETCD_EVENT_FIELDS, where + ".etcdEvent")
    raw_type = _int64(f.get("type"), where + ".type")
    try:
        etype = EventType(raw_type)
    except ValueError:
        raise IntegrityError(f"delta snapshot: {where} has unknown event type {raw_type}") from None
    kv = _kv_from_json(f.get("kv"), where + ".kv")
    if kv is None:
        raise IntegrityError(f"delta snapshot: {where} has no kv")
    prev_kv = _kv_from_json(f.get("prev_kv"), where + ".prev_kv")
    return Event(type=etype, kv=kv, prev_kv=prev_kv, time=stamp)


_GO_EVENT = frozenset(("etcdEvent", "time"))
_GO_ETCD_EVENT = frozenset(("type", "kv", "prev_kv"))
_GO_KV = frozenset(_KV_FIELDS.values())
_GO_INTS = ("create_revision", "mod_revision", "version", "lease")
_B64_STRICT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _go_kv(obj: Any) -> KeyValue | None:
    if type(obj) is not dict or not obj.keys() <= _GO_KV:
        return None
    key, value = obj.get("key", ""), obj.get("value", "")
    if type(key) is not str or type(value) is not str:
        return None
    ints = []
    for name in _GO_INTS:
        n = obj.get(name, 0)
        if type(n) is not int or not _INT64_MIN <= n <= _INT64_MAX:
            return None
        ints.append(n)
    try:  # what _bytes does for a value without CR or LF (checked by the pattern)
        raw_key = binascii.a2b_base64(key) if _B64_STRICT.fullmatch(key) else None
        raw_value = binascii.a2b_base64(value) if _B64_STRICT.fullmatch(value) else None
    except binascii.Error:
        return None
    if raw_key is None or raw_value is None:
        return None
    return KeyValue(key=raw_key, value=raw_value, create_revision=ints[0], mod_revision=ints[1], version=ints[2],
                    lease=ints[3])


def _events_as_go_writes_them(items: Any) -> list[Event] | None:
    """The events of a payload whose every object uses exactly the names Go writes, with values
    of the types Go writes (``decode_delta``'s general path gives the same events for it); None
    for anything else."""
    if type(items) is not list:
        return None
    out = []
    for item in items:
        if type(item) is not dict or not item.keys() <= _GO_EVENT:
            return None
        inner, stamp = item.get("etcdEvent"), item.get("time", "")
        if type(inner) is not dict or not inner.keys() <= _GO_ETCD_EVENT or type(stamp) is not str:
            return None
        etype = inner.get("type", 0)
        if type(etype) is not int or etype not in (0, 1):
            return None
        kv = _go_kv(inner.get("kv"))
        if kv is None:
            return None
        prev_kv = None
        if "prev_kv" in inner:
            prev_kv = _go_kv(inner["prev_kv"])
            if prev_kv is None:
                return None
        out.append(Event(type=EventType(etype), kv=kv, prev_kv=prev_kv, time=stamp))
    return out


def decode_delta(payload: bytes) -> list[Event]:
    """Verify the SHA-256 trailer of a (decompressed) delta payload and parse its events."""
    if len(payload) <= SHA256_SIZE:
        raise IntegrityError(
            f"delta snapshot payload is {len(payload)} bytes: too short to hold events "
            f"and a {SHA256_SIZE}-byte sha256"
        )
    body = memoryview(payload)[:-SHA256_SIZE]
    expected = bytes(payload[-SHA256_SIZE:])
    actual = hashlib.sha256(body).digest()
    if actual != expected:
        raise IntegrityError(
            f"delta snapshot checksum mismatch: expected sha256 {expected.hex()} got {actual.hex()}"
        )
    text = bytes(body)
    del body
    try:
        # Go writes exactly one shape; read as plain dicts it is decoded several times faster,
        # and anything else (other spellings of the names, nulls, odd types) takes the general path
        fast = _events_as_go_writes_them(json.loads(text))
    except (ValueError, UnicodeDecodeError, RecursionError):
        fast = None  # the general path below reports it
    if fast is not None:
        return fast
    try:
        items = json.loads(text, object_pairs_hook=_Pairs)
    except (ValueError, UnicodeDecodeError) as e:
        raise IntegrityError(f"delta snapshot is not valid JSON: {e}") from None
    except RecursionError:
        raise IntegrityError("delta snapshot is not a JSON array of events (nested too deeply)") from None
    if items is None:
        return []
    if not isinstance(items, list) or isinstance(items, _Pairs):
        raise IntegrityError("delta snapshot is not a JSON array of events")
    return [_event_from_json(item, n) for n, item in enumerate(items)]


# -- streaming decoding ----------------------------------------------------------------------
#
# ``decode_delta`` needs the whole payload; a delta can be large and a history search reads a
# whole chain, so this decoder takes the decompressed bytes chunk by chunk and yields each event
# as soon as its JSON element is complete. Memory: one chunk plus the largest single element.
# The SHA-256 trailer can only be checked at the end, so the caller must treat the events as
# unverified until the generator has finished without an error.

_STREAM_READ = 256 * 1024
_WS = " \t\n\r"


class TrailerHash:
    """SHA-256 of everything but the last 32 bytes of a stream, which are kept aside as the expected
    digest (the trailer of etcd's full snapshots and of delta payloads)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.tail = b""
        self.size = 0

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; returns the bytes that are now known not to be the trailer."""
        self.size += len(data)
        joined = self.tail + data
        body, self.tail = joined[:-SHA256_SIZE], joined[-SHA256_SIZE:]
        self.hash.update(body)
        return body

    def check(self) -> None:
        if self.size <= SHA256_SIZE:
            raise IntegrityError(f"delta snapshot payload is {self.size} bytes: too short to hold events "
                                 f"and a {SHA256_SIZE}-byte sha256")
        actual = self.hash.digest()
        if actual != self.tail:
            raise IntegrityError(f"delta snapshot checksum mismatch: expected sha256 {self.tail.hex()} "
                                 f"got {actual.hex()}")


class _DeltaStream:
    """The parser behind :func:`iter_delta_events`: a text buffer over the chunks, and a position."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        import codecs

        self.hasher = TrailerHash()
        self.text = codecs.getincrementaldecoder("utf-8")()
        self.decoder = json.JSONDecoder(object_pairs_hook=_Pairs)
        self.source = iter(chunks)
        self.buf, self.pos, self.eof = "", 0, False

    def more(self) -> bool:
        """Read on (at least _STREAM_READ bytes, so that small chunks cost no string copy each)."""
        if self.eof:
            return False
        pieces, size = [], 0
        try:
            while size < _STREAM_READ:
                chunk = next(self.source, None)
                if chunk is None:
                    self.eof = True
                    pieces.append(self.text.decode(b"", final=True))
                    break
                pieces.append(self.text.decode(self.hasher.feed(chunk)))
                size += len(chunk)
        except UnicodeDecodeError as exc:
            raise IntegrityError(f"delta snapshot is not valid JSON: {exc}") from None
        self.buf = self.buf[self.pos:] + "".join(pieces)
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-blank character ("" at the end of the input)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def fail(self, message: str) -> IntegrityError:
        """The error for malformed input: a checksum mismatch when the trailer does not match either
        (a corrupt object, as :func:`decode_delta` reports it), else ``message``."""
        for chunk in self.source:
            self.hasher.feed(chunk)
        try:
            self.hasher.check()
        except IntegrityError as exc:
            return exc
        return IntegrityError(message)

    def element(self, index: int) -> Event:
        while True:
            try:
                item, self.pos = self.decoder.raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as exc:
                # incomplete (or bad): read on until the pending text has doubled, so that a large
                # element is not parsed again once per small chunk
                want, grew = 2 * (len(self.buf) - self.pos) + 1, False
                while len(self.buf) - self.pos < want and self.more():
                    grew = True
                if not grew:
                    raise IntegrityError(f"delta snapshot is not valid JSON: {exc}") from None
            except RecursionError:
                raise IntegrityError("delta snapshot is not a JSON array of events (nested too deeply)") from None
        if not isinstance(item, _Pairs):
            raise IntegrityError(f"delta snapshot: event {index} is not a JSON object")
        return _event_from_json(item, index)

    def events(self) -> Iterator[Event]:
        first = self.peek()
        if first == "n":
            while len(self.buf) - self.pos < 4 and self.more():
                pass
            if self.buf[self.pos:self.pos + 4] != "null":
                raise IntegrityError("delta snapshot is not valid JSON: expected an array")
            self.pos += 4
        elif first != "[":
            raise IntegrityError("delta snapshot is not a JSON array of events")
        else:
            self.pos += 1
            index = 0
            sep = self.peek()
            while sep != "]":
                yield self.element(index)
                index += 1
                sep = self.peek()
                if sep == ",":
                    self.pos += 1
                elif sep != "]":
                    raise IntegrityError("delta snapshot is not valid JSON: expected ',' or ']' after an event")
            self.pos += 1
        if self.peek() != "":
            raise IntegrityError("delta snapshot is not valid JSON: extra data after the array")
        self.hasher.check()


def iter_delta_events(chunks: Iterable[bytes]) -> Iterator[Event]:
    """The events of a (decompressed) delta payload given as ``chunks``, one at a time, parsed as
    :func:`decode_delta` parses them. The trailer is checked once the input is exhausted: an
    IntegrityError then (or on malformed JSON, reported as a checksum mismatch when the trailer
    does not match either) means no event yielded so far can be trusted."""
    stream = _DeltaStream(chunks)
    try:
        yield from stream.events()
    except IntegrityError as exc:
        raise stream.fail(str(exc)) from None
