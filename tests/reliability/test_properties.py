"""Property-based tests (hypothesis) of the parsers that read what others wrote: object names
(a bucket may hold anything), delta payloads and compressed streams (bytes may be damaged).

The promise under test: a valid input round-trips exactly; any other input raises the one error
type its caller handles (``SnapshotNameError`` for names, ``IntegrityError`` for payloads), never
another exception that would escape as a traceback or abort a whole listing.
"""

from __future__ import annotations

import hashlib
import io
import json
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from etcdbr.compression import compress_bytes, decompress_bytes, decompressing_reader
from etcdbr.delta import Event, EventType, KeyValue, decode_delta, encode_delta
from etcdbr.errors import IntegrityError
from etcdbr.snapshot import (
    Kind,
    Snapshot,
    SnapshotNameError,
    chain_gaps,
    latest_chain,
    new_snapshot,
    parse_key,
    parse_listing,
)
from etcdbr.verify import check_delta, check_full

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _once(outcome, case: str, target: str, observed: str) -> None:
    """A property test records one row, however many examples hypothesis runs."""
    if not outcome.rows:
        outcome.record("bad-input", case, target, observed)
SUFFIXES = ["", ".gz", ".zlib", ".Z", ".zst"]
CODECS = [".gz", ".zlib", ".Z", ".zst"]

# -- names -----------------------------------------------------------------------------------------
segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12).filter(
    lambda s: s not in ("v1", "v2", ".", ".."))
prefixes = st.lists(segment, max_size=3).map(lambda parts: "/".join(parts + ["v2"]))
revisions = st.integers(min_value=0, max_value=10**12)
unix_times = st.integers(min_value=0, max_value=2**33)


@st.composite
def snapshots(draw):
    kind = draw(st.sampled_from([Kind.FULL, Kind.INCR]))
    last = draw(revisions)
    # A delta never starts at revision 0 (etcd's first revision is 1); chunk names rely on that to
    # tell a full's pieces from a delta's.
    last = max(last, 1) if kind is Kind.INCR else last
    start = 0 if kind is Kind.FULL else draw(st.integers(min_value=1, max_value=last))
    created = datetime.fromtimestamp(draw(unix_times), tz=timezone.utc)
    return new_snapshot(kind, start, last, prefix=draw(prefixes), compression_suffix=draw(st.sampled_from(SUFFIXES)),
                        is_final=draw(st.booleans()), created_on=created)


@FAST
@given(snapshots())
def test_names_round_trip(s: Snapshot):
    parsed = parse_key(s.key)
    assert parsed == s
    assert parsed.key == s.key
    assert parsed.snap_name == s.snap_name


@FAST
@given(snapshots(), st.integers(min_value=1, max_value=10**9))
def test_chunk_names_round_trip(s: Snapshot, part: int):
    key = f"{s.key}/{part:010d}"
    parsed = parse_key(key)
    assert parsed.is_chunk and parsed.kind is Kind.CHUNK
    assert (parsed.start_revision, parsed.last_revision, parsed.created_on) == (s.start_revision, s.last_revision,
                                                                                s.created_on)
    assert parsed.key == key


name_chars = st.sampled_from(list("FullIncr-0123456789.gzZfinalv12/²١ \x00é"))


@FAST
@given(st.one_of(st.text(max_size=80), st.lists(name_chars, max_size=60).map("".join)))
@example("v2/Full-00000000-00000001-99999999999999999999")
@example("v2/Full-²-1-3")
@example("v2/Incr-5-4-1")
@example("v1/Backup-1/Full-0-1-2/x/y")
def test_any_key_parses_or_raises_name_error(outcome, key: str):
    _once(outcome, "arbitrary object keys (hypothesis: any text, digits from other scripts, huge times)",
          "snapshot name parser", "a snapshot or SnapshotNameError, nothing else; only ASCII decimal revisions")
    try:
        s = parse_key(key)
    except SnapshotNameError:
        return
    # What parses is a snapshot the Go tool would read the same way: ASCII digits, start <= last.
    assert 0 <= s.start_revision <= s.last_revision
    assert s.snap_name.split("-")[1].isascii()


@FAST
@given(st.lists(st.text(max_size=40).map(lambda t: "etcd/v2/" + t), max_size=20), st.lists(snapshots(), max_size=5))
def test_one_stray_key_never_hides_the_others(outcome, strays, good):
    _once(outcome, "stray keys mixed into a listing (hypothesis)", "store listing",
          "strays skipped with a warning; every real snapshot still listed")
    keys = [(k, {}) for k in strays] + [(s.key, {}) for s in good]
    listed = parse_listing(keys)
    for s in good:
        assert s in listed


# -- chains ----------------------------------------------------------------------------------------
@FAST
@given(st.integers(min_value=1, max_value=10**6), st.lists(st.integers(min_value=1, max_value=50), min_size=1,
                                                           max_size=12), st.data())
def test_chain_gaps_find_exactly_the_missing_delta(base, sizes, data):
    full = new_snapshot(Kind.FULL, 0, base, prefix="v2", created_on=datetime(2024, 1, 1, tzinfo=timezone.utc))
    deltas, start = [], base + 1
    for i, n in enumerate(sizes):
        deltas.append(new_snapshot(Kind.INCR, start, start + n - 1, prefix="v2",
                                   created_on=datetime(2024, 1, 1, 0, i + 1, tzinfo=timezone.utc)))
        start += n
    assert chain_gaps(full, deltas) == []
    assert latest_chain([full, *deltas]) == (full, deltas)
    if len(deltas) >= 2:
        drop = data.draw(st.integers(min_value=0, max_value=len(deltas) - 2))
        missing = deltas[drop]
        assert chain_gaps(full, deltas[:drop] + deltas[drop + 1:]) == [(missing.start_revision,
                                                                         missing.last_revision + 1)]


# -- delta payloads --------------------------------------------------------------------------------
keys = st.binary(min_size=1, max_size=24)
events = st.builds(
    lambda t, k, v, rev, ver, lease: Event(type=t, kv=KeyValue(k, v if t is EventType.PUT else b"", rev, rev,
                                                                   ver, lease), time="2024-05-01T12:00:00.5Z"),
    st.sampled_from([EventType.PUT, EventType.DELETE]), keys, st.binary(max_size=40),
    st.integers(min_value=1, max_value=2**62), st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=2**62))


@FAST
@given(st.lists(events, min_size=1, max_size=12))
def test_delta_round_trip(evs):
    payload = encode_delta(evs)
    assert decode_delta(payload) == evs


@FAST
@given(st.lists(events, min_size=1, max_size=6), st.data())
def test_any_flipped_byte_is_an_integrity_error(outcome, evs, data):
    _once(outcome, "delta payload with any one byte changed (hypothesis)", "delta decoder",
          "IntegrityError (sha256 mismatch) every time")
    payload = bytearray(encode_delta(evs))
    i = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    payload[i] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(IntegrityError):
        decode_delta(bytes(payload))


@FAST
@given(st.lists(events, min_size=1, max_size=6), st.data())
def test_any_truncation_is_an_integrity_error(outcome, evs, data):
    _once(outcome, "delta payload truncated at any byte (hypothesis)", "delta decoder", "IntegrityError every time")
    payload = encode_delta(evs)
    cut = data.draw(st.integers(min_value=0, max_value=len(payload) - 1))
    with pytest.raises(IntegrityError):
        decode_delta(payload[:cut])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["etcdEvent", "EtcdEvent", "kv", "KV", "key", "value", "type", "time", "mod_revision",
                         "create_revision", "version", "lease", "prev_kv", "x"]), children, max_size=5),
    max_leaves=20)


def _with_hash(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@FAST
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
@example(b"[" * 100_000)
@example(b'[{"etcdEvent":{"kv":{"key":"!!"}},"time":"x"}]')
@example(b'[{"etcdEvent":{"type":7,"kv":{"key":"YQ=="}}}]')
def test_any_hashed_body_decodes_or_raises_integrity_error(outcome, body):
    _once(outcome, "arbitrary JSON or bytes with a valid sha256 (hypothesis; 100,000-deep nesting included)",
          "delta decoder", "events or IntegrityError, nothing else")
    try:
        result = decode_delta(_with_hash(body))
    except IntegrityError:
        return
    assert isinstance(result, list) and all(isinstance(e, Event) for e in result)


@FAST
@given(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)),
       st.integers(min_value=0, max_value=100), st.integers(min_value=0, max_value=100))
@example(b"[" * 100_000, 1, 2)
def test_verify_delta_check_raises_only_integrity_errors(body, start, span):
    try:
        check_delta(io.BytesIO(_with_hash(body)), "", start, start + span)
    except IntegrityError:
        pass


# -- compressed streams ----------------------------------------------------------------------------
@FAST
@given(st.binary(max_size=4000), st.sampled_from(CODECS))
def test_codecs_round_trip(data, suffix):
    policy = {".gz": "gzip", ".zlib": "zlib", ".Z": "lzw", ".zst": "zstd"}[suffix]
    assert decompress_bytes(compress_bytes(data, policy), suffix) == data


@FAST
@given(st.binary(min_size=1, max_size=3000), st.sampled_from(CODECS), st.data())
def test_damaged_compressed_stream_is_an_integrity_error_or_detected_by_hash(outcome, data, suffix, d):
    """A damaged object either fails to decompress (IntegrityError) or decompresses to different
    bytes, which the snapshot's own SHA-256 then catches: it is never silently taken as good."""
    _once(outcome, "gzip/zlib/lzw/zstd object with a flipped byte or truncated (hypothesis)", "decompression",
          "IntegrityError, or output the snapshot's own SHA-256 rejects; never taken as good")
    policy = {".gz": "gzip", ".zlib": "zlib", ".Z": "lzw", ".zst": "zstd"}[suffix]
    original = _with_hash(data)
    blob = bytearray(compress_bytes(original, policy))
    how = d.draw(st.sampled_from(["flip", "truncate"]))
    if how == "flip":
        i = d.draw(st.integers(min_value=0, max_value=len(blob) - 1))
        blob[i] ^= d.draw(st.integers(min_value=1, max_value=255))
    else:
        blob = blob[: d.draw(st.integers(min_value=0, max_value=len(blob) - 1))]
    try:
        out = decompressing_reader(io.BytesIO(bytes(blob)), suffix).read()
    except IntegrityError:
        return
    assume(out != original)  # a flip in gzip's header OS byte, say, changes nothing that matters
    assert hashlib.sha256(out[:-32]).digest() != out[-32:] or len(out) < 32


@FAST
@given(st.binary(max_size=2000), st.sampled_from(SUFFIXES))
def test_verify_full_check_raises_only_integrity_errors(blob, suffix):
    try:
        check_full(io.BytesIO(blob), suffix)
    except IntegrityError:
        pass
