"""Probe: can a restore keep several delta transactions in flight and stay revision-exact?

A restore replays one transaction per source revision, each waiting for the one before, so it
runs at etcd's sequential transaction rate. The obvious speed-up is to keep N transactions in
flight, each guarded so that it can only apply right after its predecessor: revision r carries
``compare mod_revision(k) == r-1`` for a key k written at r-1; a transaction whose compare
fails writes nothing and consumes no revision, and is sent again once its predecessor is known
to have applied (never earlier, so that none applies twice).

This probe measures that scheme against the sequential one on a fresh etcd (fsync off, as the
restore's temporary member runs): whenever a guard fails, everything in flight is awaited and the
replay resumes from the revision etcd reports. It prints transactions per second and how often
a guard failed, i.e. how often etcd applied concurrent requests of one connection out of order.

    bench/probe replay_order [--count N] [--windows 0,2,4,16,64]
"""

from __future__ import annotations

import argparse
import collections
import time

import grpc
from etcdbr.etcd import proto as pb
from etcdbr.etcd import proto as stubs

from bench.common import etcd

VALUE = b"v" * 256


def _key(i: int) -> bytes:
    return b"/registry/probe/%09d" % i


def _put(i: int) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=_key(i), value=VALUE))


def replay(kv, count: int, window: int) -> tuple[float, int]:
    """Apply ``count`` one-put revisions; returns (seconds, guard failures)."""
    base = kv.Range(pb.RangeRequest(key=b"\0", count_only=True)).header.revision
    t0 = time.perf_counter()
    if window == 0:
        for i in range(count):
            kv.Txn(pb.TxnRequest(success=[_put(i)]))
        return time.perf_counter() - t0, 0
    kv.Txn(pb.TxnRequest(success=[_put(0)]))  # the first has no predecessor of ours to guard on

    def send(i: int):
        guard = pb.Compare(target=pb.Compare.MOD, key=_key(i - 1), mod_revision=base + i,
                           result=pb.Compare.EQUAL)
        return kv.Txn.future(pb.TxnRequest(compare=[guard], success=[_put(i)]))

    inflight: collections.deque = collections.deque()
    following, failures = 1, 0
    while following < count or inflight:
        while following < count and len(inflight) < window:
            inflight.append(send(following))
            following += 1
        if not inflight.popleft().result().succeeded:
            failures += 1
            for fut in inflight:
                fut.result()
            inflight.clear()
            reached = kv.Range(pb.RangeRequest(key=b"\0", count_only=True)).header.revision
            following = reached - base
    took = time.perf_counter() - t0
    reached = kv.Range(pb.RangeRequest(key=b"\0", count_only=True)).header.revision
    if reached != base + count:
        raise RuntimeError(f"replay ended at revision {reached}, expected {base + count}")
    return took, failures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=30_000)
    p.add_argument("--windows", default="0,2,4,16,64", help="transactions in flight; 0 = sequential")
    args = p.parse_args()
    print(f"{'in flight':>10} {'txn/s':>8} {'guard failures':>15}")
    for window in (int(w) for w in args.windows.split(",")):
        with etcd() as member:
            channel = grpc.insecure_channel(member.endpoint)
            try:
                took, failures = replay(stubs.KVStub(channel), args.count, window)
            finally:
                channel.close()
        label = "sequential" if window == 0 else str(window)
        print(f"{label:>10} {args.count / took:>8.0f} {failures:>15}")


if __name__ == "__main__":
    main()
