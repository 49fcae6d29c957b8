"""Our ``snapshot history``: the search of a store's deltas for one key, streamed, every trailer
checked; or, with ``--generate``, writing the synthetic chain it searches.

``python -m bench.drivers.history --store JSON --key K [--prefix]``
``python -m bench.drivers.history --store JSON --generate EVENTS --per-delta N --key K``
"""

from __future__ import annotations

import argparse
import io
import time

from bench.drivers._util import emit, quiet_logs, store_config


def generate(store, events: int, per_delta: int, key: bytes) -> dict:
    """A full snapshot name at revision 1 is not needed (history reads deltas only): deltas of
    ``per_delta`` events each, 256-byte values on 10,000 keys, ``key`` put every 100,000 revisions
    and deleted once in the middle, times one millisecond apart, gzip as the snapshotter writes."""
    from datetime import datetime, timedelta, timezone

    from etcdbr.compression import compress_bytes, suffix_for
    from etcdbr.delta import DeltaEncoder, Event, EventType, KeyValue, format_go_time
    from etcdbr.snapshot import Kind, new_snapshot

    start = datetime(2026, 12, 5, tzinfo=timezone.utc)
    value = b"v" * 256
    rev, written, stored = 2, 0, 0
    while written < events:
        enc = DeltaEncoder()
        first = rev
        for _ in range(min(per_delta, events - written)):
            if rev == events // 2:
                ev = Event(EventType.DELETE, KeyValue(key=key, mod_revision=rev))
            elif rev % 100_000 == 0:
                ev = Event(EventType.PUT, KeyValue(key=key, value=value, create_revision=rev, mod_revision=rev,
                                                   version=1))
            else:
                k = f"/registry/bench/{rev % 10_000:05d}".encode()
                ev = Event(EventType.PUT, KeyValue(key=k, value=value, create_revision=2, mod_revision=rev, version=1))
            enc.add(Event(ev.type, ev.kv, time=format_go_time(start + timedelta(milliseconds=rev))))
            rev += 1
            written += 1
        payload = compress_bytes(enc.finish(), "gzip")
        snap = new_snapshot(Kind.INCR, first, rev - 1, prefix=store.prefix, compression_suffix=suffix_for("gzip"),
                            created_on=start + timedelta(milliseconds=rev))
        store.save(snap, io.BytesIO(payload))
        stored += len(payload)
    return {"events": written, "stored_bytes": stored, "last_revision": rev - 1}


def main(args) -> dict:
    from etcdbr.history import HistoryResult, Window, search
    from etcdbr.snapstore import open_store

    store = open_store(store_config(args.store))
    try:
        if args.generate:
            return generate(store, args.generate, args.per_delta, args.key.encode())
        t0 = time.perf_counter()
        result = HistoryResult()
        matches = list(search(store, Window(key=args.key.encode(), prefix=args.prefix), result=result))
        took = time.perf_counter() - t0
        return {"seconds": round(took, 3), "matches": len(matches), "events_read": result.events_read,
                "deltas_read": result.deltas_read,
                "deletes": [m.revision for m in matches if m.operation == "delete"]}
    finally:
        store.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--prefix", action="store_true")
    p.add_argument("--generate", type=int, default=0)
    p.add_argument("--per-delta", type=int, default=20_000)
    a = p.parse_args()
    quiet_logs()
    emit(main(a))
