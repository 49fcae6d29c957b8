"""Delta snapshot payloads: Go encoding/json byte compatibility and the sha256 trailer."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdbr.delta import (
    DeltaEncoder,
    Event,
    EventType,
    KeyValue,
    decode_delta,
    encode_delta,
    encode_event,
    format_go_time,
    go_time_now,
    parse_go_time,
)
from etcdbr.errors import IntegrityError

NGINX = b"/registry/pods/default/nginx"
LEASE_KEY = b"/registry/leases/kube-node-lease/node-1"
EMPTY_KEY = b"/registry/configmaps/default/empty"

# Written by hand in the shape Go's json.Marshal gives []event{EtcdEvent *clientv3.Event,
# Time time.Time}: struct field order, omitempty everywhere in mvccpb, PUT (0) omitted,
# []byte as standard base64, RFC3339Nano times with trailing zeros trimmed.
GOLDEN_JSON = (
    b'[{"etcdEvent":{"kv":{"key":"L3JlZ2lzdHJ5L3BvZHMvZGVmYXVsdC9uZ2lueA==","create_revision":5,'
    b'"mod_revision":7,"version":2,"value":"cG9kLXNwZWMtdjE="}},'
    b'"time":"2024-01-02T15:04:05.123456789+01:00"},'
    b'{"etcdEvent":{"kv":{"key":"L3JlZ2lzdHJ5L2xlYXNlcy9rdWJlLW5vZGUtbGVhc2Uvbm9kZS0x",'
    b'"create_revision":8,"mod_revision":8,"version":1,"value":"AP9iaW5hcnk8Jj4=",'
    b'"lease":7587862345367781898}},"time":"2024-01-02T14:04:06Z"},'
    b'{"etcdEvent":{"type":1,"kv":{"key":"L3JlZ2lzdHJ5L3BvZHMvZGVmYXVsdC9uZ2lueA==","mod_revision":9},'
    b'"prev_kv":{"key":"L3JlZ2lzdHJ5L3BvZHMvZGVmYXVsdC9uZ2lueA==","create_revision":5,'
    b'"mod_revision":7,"version":2,"value":"cG9kLXNwZWMtdjE="}},'
    b'"time":"2024-01-02T15:04:07.5+01:00"},'
    b'{"etcdEvent":{"kv":{"key":"L3JlZ2lzdHJ5L2NvbmZpZ21hcHMvZGVmYXVsdC9lbXB0eQ==",'
    b'"create_revision":10,"mod_revision":10,"version":1}},'
    b'"time":"2024-01-02T06:04:08.000001-08:00"}]'
)
GOLDEN_SHA256 = "5ec04997d6295cb48f8e3a350056d33ef6ede42f6119b08b975052334ced6d20"
GOLDEN_PAYLOAD = GOLDEN_JSON + bytes.fromhex(GOLDEN_SHA256)

NGINX_V1 = KeyValue(NGINX, b"pod-spec-v1", create_revision=5, mod_revision=7, version=2)
GOLDEN_EVENTS = [
    Event(EventType.PUT, NGINX_V1, time="2024-01-02T15:04:05.123456789+01:00"),
    Event(
        EventType.PUT,
        KeyValue(LEASE_KEY, b"\x00\xffbinary<&>", 8, 8, 1, lease=7587862345367781898),
        time="2024-01-02T14:04:06Z",
    ),
    Event(
        EventType.DELETE,
        KeyValue(NGINX, mod_revision=9),
        prev_kv=NGINX_V1,
        time="2024-01-02T15:04:07.5+01:00",
    ),
    Event(EventType.PUT, KeyValue(EMPTY_KEY, b"", 10, 10, 1), time="2024-01-02T06:04:08.000001-08:00"),
]


# -- known answer ----------------------------------------------------------------------------


def test_golden_payload_decodes_to_the_expected_events():
    assert hashlib.sha256(GOLDEN_JSON).hexdigest() == GOLDEN_SHA256
    assert decode_delta(GOLDEN_PAYLOAD) == GOLDEN_EVENTS


def test_encoder_reproduces_the_golden_payload_byte_for_byte():
    enc = DeltaEncoder()
    for ev in GOLDEN_EVENTS:
        enc.add(ev)
    assert enc.finish() == GOLDEN_PAYLOAD
    assert encode_delta(GOLDEN_EVENTS) == GOLDEN_PAYLOAD


def test_encoder_bookkeeping():
    enc = DeltaEncoder()
    assert enc.size == 0 and enc.count == 0
    assert enc.first_revision is None and enc.last_revision is None
    added = [enc.add(ev) for ev in GOLDEN_EVENTS]
    # Go compares the buffer without the closing bracket against the memory limit.
    assert sum(added) == enc.size == len(GOLDEN_JSON) - 1
    assert added[0] == len(encode_event(GOLDEN_EVENTS[0])) + 1  # "["
    assert added[1] == len(encode_event(GOLDEN_EVENTS[1])) + 1  # ","
    assert enc.count == len(enc) == 4
    assert (enc.first_revision, enc.last_revision) == (7, 10)
    payload = enc.finish()
    assert payload[:-32] == GOLDEN_JSON and payload[-32:] == hashlib.sha256(GOLDEN_JSON).digest()
    with pytest.raises(RuntimeError):
        enc.add(GOLDEN_EVENTS[0])
    with pytest.raises(RuntimeError):
        enc.finish()


def test_empty_encoder_still_produces_a_valid_payload():
    payload = DeltaEncoder().finish()
    assert payload == b"[]" + hashlib.sha256(b"[]").digest()
    assert decode_delta(payload) == []


def test_go_omitempty_shapes():
    t = "2024-01-02T14:04:06Z"
    assert encode_event(Event(EventType.PUT, KeyValue(b""), time=t)) == (
        b'{"etcdEvent":{"kv":{}},"time":"2024-01-02T14:04:06Z"}'
    )
    assert encode_event(Event(EventType.DELETE, KeyValue(b"k", lease=-1), time=t)) == (
        b'{"etcdEvent":{"type":1,"kv":{"key":"aw==","lease":-1}},"time":"2024-01-02T14:04:06Z"}'
    )
    with_empty_prev = Event(EventType.PUT, KeyValue(b"k"), prev_kv=KeyValue(b""), time=t)
    assert encode_event(with_empty_prev).count(b'"prev_kv":{}') == 1


def test_missing_time_is_stamped_now():
    line = encode_event(Event(EventType.PUT, KeyValue(b"k", b"v", 1, 1, 1)))
    stamp = json.loads(line)["time"]
    assert abs(parse_go_time(stamp) - datetime.now(timezone.utc)) < timedelta(minutes=1)
    with pytest.raises(ValueError):
        encode_event(Event(EventType.PUT, KeyValue(b"k"), time='now"'))


# -- independent Go-style serializer for property tests --------------------------------------


def go_marshal(ev: Event) -> bytes:
    def kv(k: KeyValue) -> dict:
        d = {}
        if k.key:
            d["key"] = base64.b64encode(k.key).decode()
        for name in ("create_revision", "mod_revision", "version"):
            if getattr(k, name):
                d[name] = getattr(k, name)
        if k.value:
            d["value"] = base64.b64encode(k.value).decode()
        if k.lease:
            d["lease"] = k.lease
        return d

    inner = {}
    if ev.type:
        inner["type"] = int(ev.type)
    inner["kv"] = kv(ev.kv)
    if ev.prev_kv is not None:
        inner["prev_kv"] = kv(ev.prev_kv)
    return json.dumps({"etcdEvent": inner, "time": ev.time}, separators=(",", ":")).encode()


int64s = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
revisions = st.integers(min_value=0, max_value=(1 << 63) - 1)
key_values = st.builds(
    KeyValue,
    key=st.binary(max_size=40),
    value=st.binary(max_size=60),
    create_revision=revisions,
    mod_revision=revisions,
    version=revisions,
    lease=int64s,
)
times = st.builds(
    lambda dt, ns, off: format_go_time(dt.replace(tzinfo=timezone(timedelta(minutes=off))), ns),
    st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=0, max_value=999_999_999),
    st.sampled_from([0, 60, -480, 330, 345]),
)
events = st.builds(
    Event,
    type=st.sampled_from(EventType),
    kv=key_values,
    prev_kv=st.none() | key_values,
    time=times,
)


@settings(max_examples=100, deadline=None)
@given(st.lists(events, max_size=8))
def test_property_encoding_matches_go_marshal_and_round_trips(evs):
    for ev in evs:
        assert encode_event(ev) == go_marshal(ev)
    payload = encode_delta(evs)
    assert payload[:-32] == b"[" + b",".join(go_marshal(e) for e in evs) + b"]"
    assert decode_delta(payload) == evs


# -- decoding leniency: whatever Go's decoder accepts ----------------------------------------


def with_hash(body: bytes) -> bytes:
    return body + hashlib.sha256(body).digest()


def test_decoder_accepts_any_field_order_unknown_fields_and_nulls():
    body = (
        b'[{"time":"2024-01-02T15:04:05.1+01:00","extra":{"nested":[1,2]},'
        b'"etcdEvent":{"prev_kv":null,"kv":{"lease":null,"value":"djE=","key":"aw==","mod_revision":3},'
        b'"type":0,"XXX_unrecognized":"x"}}]'
    )
    [ev] = decode_delta(with_hash(body))
    assert ev == Event(
        EventType.PUT, KeyValue(b"k", b"v1", mod_revision=3), time="2024-01-02T15:04:05.1+01:00"
    )


def test_decoder_matches_keys_case_insensitively_last_one_wins():
    body = (
        b'[{"EtcdEvent":{"Type":1,"KV":{"KEY":"YQ==","key":"Yg==","Mod_Revision":4}},'
        b'"TIME":"2024-01-02T14:04:06Z"}]'
    )
    [ev] = decode_delta(with_hash(body))
    assert ev == Event(EventType.DELETE, KeyValue(b"b", mod_revision=4), time="2024-01-02T14:04:06Z")


def test_decoder_accepts_whitespace_and_wrapped_base64():
    body = (
        b'[ {"etcdEvent": {"kv": {"key": "L3JlZ2lz\\ndHJ5", "version": 1}},'
        b' "time": "2024-01-02T14:04:06.000000001Z"} ]\n'
    )
    [ev] = decode_delta(with_hash(body))
    assert ev.kv.key == b"/registry" and ev.time.endswith(".000000001Z")


def test_decoder_accepts_json_null_as_no_events():
    assert decode_delta(with_hash(b"null")) == []


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b"[1]",
        b'[{"time":"2024-01-02T14:04:06Z"}]',  # no etcdEvent
        b'[{"etcdEvent":{"type":1},"time":"2024-01-02T14:04:06Z"}]',  # no kv
        b'[{"etcdEvent":{"type":2,"kv":{}},"time":"2024-01-02T14:04:06Z"}]',
        b'[{"etcdEvent":{"kv":{"version":1.5}}}]',
        b'[{"etcdEvent":{"kv":{"version":"1"}}}]',
        b'[{"etcdEvent":{"kv":{"lease":9223372036854775808}}}]',
        b'[{"etcdEvent":{"kv":{"key":"not base64!"}}}]',
        b'[{"etcdEvent":{"kv":{"key":"YQ"}}}]',  # Go's StdEncoding needs padding
        b'[{"etcdEvent":{"kv":{}},"time":5}]',
        b"[{",
    ],
)
def test_decoder_rejects_what_go_would_reject(body):
    with pytest.raises(IntegrityError, match="delta snapshot"):
        decode_delta(with_hash(body))


# -- integrity -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 31, 32])
def test_payload_of_at_most_32_bytes_is_rejected(size):
    with pytest.raises(IntegrityError, match="too short"):
        decode_delta(GOLDEN_PAYLOAD[:size])


def test_tampered_json_is_rejected_with_both_hashes():
    tampered = bytearray(GOLDEN_PAYLOAD)
    tampered[GOLDEN_JSON.index(b'"version":2') + 10] = ord("3")
    actual = hashlib.sha256(bytes(tampered[:-32])).hexdigest()
    with pytest.raises(IntegrityError) as err:
        decode_delta(bytes(tampered))
    assert f"expected sha256 {GOLDEN_SHA256} got {actual}" in str(err.value)


def test_tampered_trailer_is_rejected():
    tampered = GOLDEN_PAYLOAD[:-1] + bytes([GOLDEN_PAYLOAD[-1] ^ 1])
    with pytest.raises(IntegrityError, match=r"expected sha256 [0-9a-f]{64} got " + GOLDEN_SHA256):
        decode_delta(tampered)


def test_truncated_payload_is_rejected():
    with pytest.raises(IntegrityError, match="expected sha256"):
        decode_delta(GOLDEN_PAYLOAD[:-5])


def test_payload_without_trailer_is_rejected():
    with pytest.raises(IntegrityError, match="expected sha256"):
        decode_delta(GOLDEN_JSON)


# -- Go time format --------------------------------------------------------------------------


def test_format_go_time():
    utc = datetime(2024, 1, 2, 14, 4, 5, tzinfo=timezone.utc)
    assert format_go_time(utc) == "2024-01-02T14:04:05Z"
    assert format_go_time(utc, 123456789) == "2024-01-02T14:04:05.123456789Z"
    assert format_go_time(utc, 120000000) == "2024-01-02T14:04:05.12Z"
    assert format_go_time(utc.replace(microsecond=500)) == "2024-01-02T14:04:05.0005Z"
    plus1 = utc.astimezone(timezone(timedelta(hours=1)))
    assert format_go_time(plus1, 1) == "2024-01-02T15:04:05.000000001+01:00"
    india = utc.astimezone(timezone(timedelta(hours=-5, minutes=-30)))
    assert format_go_time(india) == "2024-01-02T08:34:05-05:30"


def test_go_time_now_is_rfc3339nano_local():
    stamp = go_time_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)", stamp)
    assert not re.search(r"\.\d*0(Z|[+-])", stamp)  # no trailing zeros in the fraction


def test_parse_go_time_accepts_any_fraction():
    assert parse_go_time("2024-01-02T15:04:05.123456789+01:00") == datetime(
        2024, 1, 2, 14, 4, 5, 123456, tzinfo=timezone.utc
    )
    assert parse_go_time("2024-01-02T14:04:05Z") == datetime(2024, 1, 2, 14, 4, 5, tzinfo=timezone.utc)
    assert parse_go_time("2024-01-02T14:04:05.5Z").microsecond == 500000
    with pytest.raises(ValueError):
        parse_go_time("2024-01-02 14:04:05")


# -- the fast path for the shape Go writes ----------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.lists(events, max_size=8))
def test_fast_path_agrees_with_the_general_one(evs):
    from etcdbr import delta

    body = encode_delta(evs)[:-32]
    fast = delta._events_as_go_writes_them(json.loads(body))
    assert fast is not None, "Go's own shape takes the fast path"
    general = [delta._event_from_json(item, n) for n, item in
               enumerate(json.loads(body, object_pairs_hook=delta._Pairs))]
    assert fast == general == evs


@pytest.mark.parametrize("body", [
    b'[{"EtcdEvent":{"kv":{"key":"YQ=="}}}]',             # another spelling of a name
    b'[{"etcdEvent":{"kv":{"key":"YQ==","lease":null}}}]',  # a null
    b'[{"etcdEvent":{"kv":{"key":"YQ==","extra":1}}}]',     # an unknown name
    b'[{"etcdEvent":{"kv":{"key":"L3JlZ2lz\\ndHJ5"}}}]',    # wrapped base64
    b'[{"etcdEvent":{"type":true,"kv":{"key":"YQ=="}}}]',   # a bool for a number
    b'[{"etcdEvent":{"kv":{"key":"YQ=="},"prev_kv":null}}]',
    b"null",
])
def test_anything_else_takes_the_general_path(body):
    from etcdbr import delta

    assert delta._events_as_go_writes_them(json.loads(body)) is None
    if b"true" in body:  # what Go rejects is rejected there
        with pytest.raises(IntegrityError, match="64-bit integer"):
            decode_delta(with_hash(body))
    else:
        decode_delta(with_hash(body))  # and decodes there (the general path's own tests: above)
