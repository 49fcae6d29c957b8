"""The streaming delta decoder gives exactly what decode_delta gives, whatever the chunking, and
refuses what decode_delta refuses."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdbr.delta import Event, EventType, KeyValue, decode_delta, encode_delta, iter_delta_events
from etcdbr.errors import IntegrityError


def chunked(payload: bytes, size: int) -> list[bytes]:
    return [payload[i:i + size] for i in range(0, len(payload), size)]


def events(n: int, value_size: int = 7) -> list[Event]:
    return [Event(EventType.DELETE if i % 4 == 3 else EventType.PUT,
                  KeyValue(key=f"k/{i}".encode(), value=bytes([i % 256]) * (value_size * (i % 5)), create_revision=2,
                           mod_revision=10 + i, version=1 + i % 3),
                  time="2026-12-05T14:02:00.123456789Z") for i in range(n)]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), value_size=st.integers(0, 3000), size=st.integers(1, 70_000))
def test_same_events_as_decode_delta_for_any_chunking(n, value_size, size):
    payload = encode_delta(events(n, value_size))
    assert list(iter_delta_events(chunked(payload, size))) == decode_delta(payload)


def with_trailer(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("body", [b"[]", b" null ", b"\n[ ]\n"])
def test_empty_forms(body):
    payload = with_trailer(body)
    assert list(iter_delta_events([payload])) == decode_delta(payload) == []


@pytest.mark.parametrize("body, message", [
    (b"[1]", "not a JSON object"),
    (b'[{"etcdEvent":{"kv":{}}}] x', "(?i)not valid JSON.*extra data"),
    (b'[{"etcdEvent":{"kv":{}}}', "not valid JSON"),
    (b"{}", "not a JSON array"),
    (b'[{"etcdEvent":{"type":7,"kv":{}}}]', "unknown event type"),
    (b'[{"etcdEvent":{"kv":{"key":"!!"}}}]', "not valid base64"),
])
def test_malformed_json_with_a_good_trailer_is_refused_like_decode_delta(body, message):
    payload = with_trailer(body)
    with pytest.raises(IntegrityError, match=message):
        decode_delta(payload)
    with pytest.raises(IntegrityError, match=message):
        list(iter_delta_events(chunked(payload, 3)))


def test_a_flipped_bit_is_a_checksum_mismatch_even_when_the_json_breaks():
    payload = bytearray(encode_delta(events(50)))
    for where in (5, len(payload) // 2, len(payload) - 40):
        bad = bytearray(payload)
        bad[where] ^= 0x40
        with pytest.raises(IntegrityError, match="checksum mismatch"):
            list(iter_delta_events(chunked(bytes(bad), 1000)))


def test_truncated_payloads_are_refused():
    payload = encode_delta(events(5))
    for cut in (0, 10, 32, len(payload) - 1):
        with pytest.raises(IntegrityError):
            list(iter_delta_events([payload[:cut]]))


def test_events_come_out_while_the_input_is_still_being_read():
    """Streaming, not buffering: the first event is out long before the last chunk is read."""
    payload = encode_delta(events(20_000, value_size=50))
    pieces = chunked(payload, 64 * 1024)
    read = 0

    def source():
        nonlocal read
        for piece in pieces:
            read += 1
            yield piece

    stream = iter_delta_events(source())
    next(stream)
    assert len(pieces) > 20 and read <= 5
    assert sum(1 for _ in stream) == 20_000 - 1
