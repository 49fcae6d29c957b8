"""The watch path's fast encoding (``encode_watch_event``, ``GoTimeStamper``, what the delta
collector buffers) gives the same bytes as the general encoder does for the same events."""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from etcdbr.delta import (
    DeltaEncoder,
    Event,
    EventType,
    GoTimeStamper,
    KeyValue,
    decode_delta,
    encode_event,
    encode_watch_event,
    format_go_time,
)
from etcdbr.etcd import proto as pb
from etcdbr.snapshotter.collector import DeltaCollector

KVS = [
    dict(key=b"/registry/a", value=b"v", create_revision=5, mod_revision=7, version=3),
    dict(key=b"/k", value=b"", create_revision=0, mod_revision=9, version=0),       # a delete's kv
    dict(key=b"\x00\xff binary \n\"", value=bytes(range(256)) * 3, create_revision=2**40, mod_revision=2**40 + 1,
         version=7, lease=0x694D7AF1B3C2D4E5),
    dict(key=b"", value=b"x", mod_revision=1),
]


@pytest.mark.parametrize("fields", KVS)
@pytest.mark.parametrize("deleted", [False, True])
def test_watch_event_encodes_as_the_general_encoder(fields, deleted):
    stamp = "2026-12-05T02:52:08.123456789+01:00"
    general = encode_event(Event(type=EventType.DELETE if deleted else EventType.PUT, kv=KeyValue(**fields),
                                 time=stamp))
    assert encode_watch_event(deleted, pb.KeyValue(**fields), stamp) == general


@pytest.mark.parametrize("ns", [0, 1, 10**9, 1_733_366_400 * 10**9, 1_733_366_400 * 10**9 + 120_000_000,
                                1_733_366_400 * 10**9 + 999_999_999, time.time_ns()])
def test_stamper_formats_as_go_does(ns):
    stamper = GoTimeStamper()
    seconds, frac = divmod(ns, 10**9)
    expected = format_go_time(datetime.fromtimestamp(seconds).astimezone(), frac)
    assert stamper(ns) == expected
    assert stamper(ns) == expected  # from its cache
    if frac + 1 < 10**9:  # the same second again, another fraction
        assert stamper(ns + 1) == format_go_time(datetime.fromtimestamp(seconds).astimezone(), frac + 1)


def test_collector_buffers_what_the_general_encoder_makes():
    clock = 1_733_366_400.25
    collector = DeltaCollector(lambda: clock)
    collector.next_rev = 10
    events = [pb.Event(type=0, kv=pb.KeyValue(key=b"a", value=b"1", create_revision=10, mod_revision=10, version=1)),
              pb.Event(type=1, kv=pb.KeyValue(key=b"b", mod_revision=11)),
              pb.Event(type=0, kv=pb.KeyValue(key=b"c", value=b"3", create_revision=11, mod_revision=11, version=2,
                                              lease=42))]
    assert collector.add(pb.WatchResponse(events=events)) == (3, False)
    seconds, frac = divmod(int(clock * 1e9), 10**9)
    stamp = format_go_time(datetime.fromtimestamp(seconds).astimezone(), frac)
    reference = DeltaEncoder()
    for ev in events:
        kv = ev.kv
        reference.add(Event(type=EventType(ev.type), time=stamp,
                            kv=KeyValue(key=kv.key, value=kv.value, create_revision=kv.create_revision,
                                        mod_revision=kv.mod_revision, version=kv.version, lease=kv.lease)))
    payload = collector.encoder.finish()
    assert payload == reference.finish()
    assert [e.kv.key for e in decode_delta(payload)] == [b"a", b"b", b"c"]
