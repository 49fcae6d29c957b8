"""A pipelined put load: ``--window`` puts in flight on one gRPC channel for ``--duration`` seconds.

``python -m bench.drivers.load --endpoint URL --duration S [--window N] [--value-bytes B]``
Prints puts done, seconds, puts/s, the revision reached and (time, revision) every 0.1 s.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from bench.drivers._util import emit


def main(args) -> dict:
    import grpc
    from etcdbr.etcd import proto as pb
    from etcdbr.etcd import proto as stubs

    ch = grpc.insecure_channel(args.endpoint.split("://")[-1])
    kv = stubs.KVStub(ch)
    value = os.urandom(args.value_bytes)
    slots = threading.Semaphore(args.window)
    lock = threading.Lock()
    state = {"done": 0, "rev": 0, "errors": 0}
    marks: list[tuple[float, int]] = []

    def finished(fut) -> None:
        slots.release()
        try:
            rev = fut.result().header.revision
        except grpc.RpcError:
            with lock:
                state["errors"] += 1
            return
        with lock:
            state["done"] += 1
            if rev > state["rev"]:
                state["rev"] = rev

    t0 = time.perf_counter()
    end = t0 + args.duration
    next_mark = t0
    i = 0
    prefix = args.prefix.encode()
    while True:
        now = time.perf_counter()
        if now >= next_mark:
            marks.append((round(now - t0, 3), state["rev"]))
            next_mark += 0.1
        if now >= end or (args.count and i >= args.count):
            break
        slots.acquire()
        kv.Put.future(pb.PutRequest(key=prefix + b"%010d" % i, value=value), timeout=60).add_done_callback(finished)
        i += 1
    for _ in range(args.window):
        slots.acquire()
    took = time.perf_counter() - t0
    ch.close()
    return {"puts": state["done"], "errors": state["errors"], "seconds": round(took, 3),
            "rate": round(state["done"] / took, 1), "revision": state["rev"], "t0_unix": time.time() - took,
            "marks": marks}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--value-bytes", type=int, default=256)
    p.add_argument("--prefix", default="/registry/load/")
    p.add_argument("--count", type=int, default=0, help="stop after this many puts (0: run for --duration)")
    emit(main(p.parse_args()))
