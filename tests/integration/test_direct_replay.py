"""The direct delta replay (``--delta-replay=direct``: revisions written straight into the restored
db) against the replay through a temporary etcd (``--delta-replay=etcd``): each chain below is
restored both ways by the CLI, a real etcd is started on each result, and etcd's own hash of the
keyspace at the restored revision (``HashKV``: every revision-keyed entry of the ``key`` bucket,
less what compaction dropped) must be the same, with the same compact revision, the same
current revision and the source's keyspace (value, create/mod revision, version of every key).

Chains: puts, overwrites, deletes, keys deleted and created again, leases (dropped by the replay,
as the Go tool drops them) and a revoked lease, values larger than a page, transactions of many
keys, a source compacted before its full snapshot, a chain long enough for the periodic
compaction, a full snapshot that caught a compaction half done, a first delta overlapping the
full snapshot, a multi-member cluster. Authentication: tests/integration/test_auth_restore.py.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.compression import compress_bytes
from etcdbr.config import StoreConfig
from etcdbr.etcd import proto as pb
from etcdbr.restore.bbolt import BUCKET_LEAF, BoltReader, read_etcd_db
from etcdbr.restore.boltwrite import BoltWriter, TreeWriter
from etcdbr.restore.direct import revision_key
from etcdbr.snapshot import latest_chain
from etcdbr.snapstore import open_store
from services import EtcdServer

pytestmark = pytest.mark.integration

NAME = "member"
DIRECT_LINE = "replaying deltas directly into the restored db"
ETCD_LINE = "replaying deltas through a temporary etcd"


@dataclass
class Source:
    bucket: Path
    expected: sf.Dump


@dataclass
class Served:
    hash: int
    compact_revision: int
    revision: int
    dump: sf.Dump


def store_at(bucket: Path):
    return open_store(StoreConfig(provider="Local", container=str(bucket), prefix="etcd"))


def build_source(tmp: Path, before: Callable[[sf.Client], None], after: Callable[[sf.Client], None], *,
                 parts: int = 3, overlap: int = 0, compact_before_full: bool = False,
                 extra_args: tuple[str, ...] = ()) -> Source:
    """A source etcd: ``before`` then a full snapshot, ``after`` then deltas in ``parts``
    (the first starting ``overlap`` revisions before the full snapshot's)."""
    bucket = tmp / "bucket"
    store = store_at(bucket)
    server = EtcdServer(tmp / "source", name="source", bin_dir=sf.etcd_bin_dir(), extra_args=list(extra_args))
    server.start()
    try:
        client = sf.Client(server.client_url)
        try:
            before(client)
            if compact_before_full:
                client.kv.Compact(pb.CompactionRequest(revision=client.revision() - 5, physical=True), timeout=30)
            factory = sf.SnapshotFactory(server.client_url)
            full = factory.full(store, "gzip")
            after(client)
        finally:
            client.close()
        factory.deltas(store, full.last_revision - overlap, parts=parts, policies=("gzip", None))
        expected = sf.dump(server.client_url)
    finally:
        server.cleanup()
        shutil.rmtree(tmp / "source", ignore_errors=True)
    return Source(bucket, expected)


def restore(tmp: Path, bucket: Path, mode: str, *extra: str, name: str = NAME,
            cluster: str | None = None) -> Path:
    data_dir = tmp / mode / f"{name}.etcd"
    result = CliRunner().invoke(cli, [
        "restore", "--storage-provider=Local", f"--store-container={bucket}", "--store-prefix=etcd",
        f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp / mode / 'restore-tmp'}",
        f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={name}",
        f"--initial-cluster={cluster or f'{name}=http://localhost:2380'}", f"--delta-replay={mode}",
        "--max-txn-ops=1000", *extra], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert (DIRECT_LINE in result.stderr) == (mode == "direct"), result.stderr
    assert (ETCD_LINE in result.stderr) == (mode == "etcd"), result.stderr
    return data_dir


def served(data_dir: Path) -> Served:
    """HashKV at the current revision, and the keyspace, from a real etcd on ``data_dir``."""
    server = sf.serve(data_dir, sf.etcd_bin_dir())
    try:
        client = sf.Client(server.client_url)
        try:
            revision = client.revision()
            resp = client.maintenance.HashKV(pb.HashKVRequest(revision=revision), timeout=60)
        finally:
            client.close()
        return Served(resp.hash, resp.compact_revision, revision, sf.dump(server.client_url))
    finally:
        server.cleanup()


def assert_same(tmp: Path, source: Source, *extra: str) -> tuple[Served, Served]:
    through_etcd = served(restore(tmp, source.bucket, "etcd", *extra))
    direct = served(restore(tmp, source.bucket, "direct", *extra))
    assert direct.revision == through_etcd.revision == source.expected.revision
    assert direct.compact_revision == through_etcd.compact_revision
    assert direct.hash == through_etcd.hash
    assert direct.dump.kvs == through_etcd.dump.kvs == source.expected.kvs
    return direct, through_etcd


# -- workloads ---------------------------------------------------------------------------------
def put(c: sf.Client, key: bytes, value: bytes = b"v", lease: int = 0) -> None:
    c.kv.Put(pb.PutRequest(key=key, value=value, lease=lease), timeout=30)


def delete(c: sf.Client, key: bytes, end: bytes = b"") -> None:
    c.kv.DeleteRange(pb.DeleteRangeRequest(key=key, range_end=end), timeout=30)


def txn(c: sf.Client, *ops: pb.RequestOp) -> None:
    c.kv.Txn(pb.TxnRequest(success=list(ops)), timeout=60)


def op_put(key: bytes, value: bytes = b"t") -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, value=value))


def op_del(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


def mixed_before(c: sf.Client) -> None:
    for i in range(300):
        put(c, b"k/%04d" % i, b"first-%d" % i)
    for i in range(0, 300, 3):
        put(c, b"k/%04d" % i, b"second-%d" % i)  # history in the full snapshot
    for i in range(0, 300, 10):
        delete(c, b"k/%04d" % i)  # tombstones in the full snapshot
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=30).ID
    for i in range(20):
        put(c, b"leased/%02d" % i, b"l", lease)
    put(c, b"big/full", bytes(range(256)) * 20_000)  # 5 MiB: many overflow pages


def mixed_after(c: sf.Client) -> None:
    lease = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=30).ID
    doomed = c.lease.LeaseGrant(pb.LeaseGrantRequest(TTL=3600), timeout=30).ID
    for i in range(0, 300, 2):
        put(c, b"k/%04d" % i, b"third-%d" % i)  # overwrites; re-creates the deleted ones
    for i in range(1, 300, 7):
        delete(c, b"k/%04d" % i)
    for i in range(1, 300, 14):
        put(c, b"k/%04d" % i, b"again-%d" % i)  # deleted in a delta, created again
    for i in range(20):
        put(c, b"leased/%02d" % i, b"now without")  # the full snapshot's lease is dropped
        put(c, b"new-leased/%02d" % i, b"x", lease)
        put(c, b"doomed/%02d" % i, b"x", doomed)
    c.lease.LeaseRevoke(pb.LeaseRevokeRequest(ID=doomed), timeout=30)  # one revision deleting 20 keys
    put(c, b"big/delta", b"\0\xff" * 1_500_000)  # 3 MiB
    put(c, b"big/full", b"smaller now")
    txn(c, *[op_put(b"txn/%04d" % i, b"%d" % i) for i in range(400)])  # one revision, 400 keys
    txn(c, op_put(b"k/0002", b"in a txn"), op_del(b"k/0004"), op_put(b"txn/new"), op_del(b"missing"))
    delete(c, b"k/01", b"k/02")  # a range: 100 keys in one revision
    delete(c, b"txn/0100", b"txn/0200")
    for i in range(50):
        put(c, b"k/0006", b"v%d" % i)  # many versions of one key
    put(c, b"\x00binary\xff", b"\x00\x01")


BIG = ("--max-request-bytes", str(8 * 1024 * 1024), "--max-txn-ops", "1000")


def test_mixed_chain_hashes_the_same(tmp_path):
    source = build_source(tmp_path, mixed_before, mixed_after, parts=4, extra_args=BIG)
    direct, _ = assert_same(tmp_path, source)
    assert direct.compact_revision == -1  # nothing compacted: 4 deltas


def test_reference_chain_hashes_the_same(tmp_path_factory, tmp_path):
    """The shared workload of tests/snapshot_factory.py: 20,000 requests, five codecs."""
    ref = sf.reference_chain(tmp_path_factory.getbasetemp() / "reference-chain")
    sf.copy_snapshots(ref.store(), store_at(tmp_path / "bucket"))
    assert_same(tmp_path, Source(tmp_path / "bucket", ref.expected))


def test_long_chain_compacted_on_the_way_hashes_the_same(tmp_path):
    # 12 deltas: the replay through etcd compacts after the 10th, the direct one drops the same
    source = build_source(tmp_path, mixed_before, mixed_after, parts=12, extra_args=BIG)
    direct, _ = assert_same(tmp_path, source)
    assert direct.compact_revision > 0


def test_source_compacted_before_its_full_snapshot_hashes_the_same(tmp_path):
    source = build_source(tmp_path, mixed_before, mixed_after, compact_before_full=True, extra_args=BIG)
    direct, _ = assert_same(tmp_path, source)
    assert direct.compact_revision > 0


def test_first_delta_overlapping_the_full_snapshot_hashes_the_same(tmp_path):
    source = build_source(tmp_path, mixed_before, mixed_after, overlap=40, extra_args=BIG)
    chain = latest_chain(store_at(source.bucket).list())
    assert chain[1][0].start_revision <= chain[0].last_revision - 39
    assert_same(tmp_path, source)


def test_full_snapshot_catching_a_compaction_half_done_hashes_the_same(tmp_path):
    """etcd marks ``scheduledCompactRev`` before it deletes anything and ``finishedCompactRev``
    after: a snapshot taken in between holds the first without the second, and etcd finishes
    the compaction when it starts. Such a full snapshot is made here from a real one."""
    source = build_source(tmp_path, mixed_before, mixed_after, extra_args=BIG)
    full, _deltas = latest_chain(store_at(source.bucket).list())
    scheduled = full.last_revision - 200

    def halfway(db: BoltReader, out: BoltWriter) -> None:
        for name in sorted(db.bucket_names()):
            items = dict(db.items(name))
            if name == b"meta":
                items[b"scheduledCompactRev"] = revision_key(scheduled, 0)
            out.bucket(name, sorted(items.items()))

    rewrite_full(tmp_path, source.bucket, halfway)
    direct, _ = assert_same(tmp_path, source)
    assert direct.compact_revision == scheduled


def rewrite_full(tmp: Path, bucket: Path, write: Callable[[BoltReader, BoltWriter], None]) -> None:
    """Replace the chain's full snapshot by a db ``write`` makes from it (with a fresh trailer)."""
    from etcdbr.compression import decompress_bytes

    store = store_at(bucket)
    full, _deltas = latest_chain(store.list())
    raw = tmp / "full.db"
    fh = store.fetch(full)
    try:
        raw.write_bytes(decompress_bytes(fh.read(), full.compression_suffix)[:-32])
    finally:
        fh.close()
    made = tmp / "made.db"
    with BoltReader.open(raw) as db:
        out = BoltWriter(made, db.meta.page_size)
        write(db, out)
        out.finish()
    body = made.read_bytes()
    store.save(full, io.BytesIO(compress_bytes(body + hashlib.sha256(body).digest(), "gzip")))


def with_a_nested_bucket(db: BoltReader, out: BoltWriter) -> None:
    """The db as it is, plus a bucket ``extra`` holding a bucket (etcd ignores buckets it does
    not know; the direct replay does not write nested ones)."""
    for name in sorted(db.bucket_names()):
        out.bucket(name, list(db.items(name)))
    inner = TreeWriter(out)
    inner.add(b"a", b"1")
    extra = out.open_bucket(b"extra")
    extra.add(b"nested", struct.pack("<QQ", inner.finish(), 0), BUCKET_LEAF)
    extra.finish()


@pytest.mark.parametrize("members", [1, 3])
def test_a_db_the_direct_replay_does_not_handle_is_replayed_through_etcd(tmp_path, members):
    source = build_source(tmp_path, mixed_before, mixed_after, extra_args=BIG)
    rewrite_full(tmp_path, source.bucket, with_a_nested_bucket)
    cluster = ",".join(f"{NAME if i == 0 else f'm{i}'}=http://127.0.0.{i + 1}:2380" for i in range(members))
    data_dir = tmp_path / "restored" / f"{NAME}.etcd"
    result = CliRunner().invoke(cli, [
        "restore", "--storage-provider=Local", f"--store-container={source.bucket}", "--store-prefix=etcd",
        f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp_path / 'restore-tmp'}",
        f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={NAME}", f"--initial-cluster={cluster}",
        "--initial-advertise-peer-urls=http://127.0.0.1:2380", "--max-txn-ops=1000"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = result.stderr
    assert "cannot write the deltas into the restored db directly" in log and "nested bucket" in log
    assert DIRECT_LINE in log and ETCD_LINE in log
    db = data_dir / "member" / "snap" / "db"
    assert sorted(m["name"] for m in read_etcd_db(db).members) == sorted(c.split("=")[0] for c in cluster.split(","))
    if members > 1:  # served alone from a one-member copy
        alone = tmp_path / "alone" / f"{NAME}.etcd"
        subprocess.run([str(sf.etcd_bin_dir() / "etcdutl"), "snapshot", "restore", str(db), "--skip-hash-check",
                        "--data-dir", str(alone), "--name", NAME, "--initial-cluster",
                        f"{NAME}=http://localhost:2380"], check=True, capture_output=True)
        data_dir = alone
    got = served(data_dir)
    assert got.revision == source.expected.revision and got.dump.kvs == source.expected.kvs


def test_multi_member_cluster_hashes_the_same(tmp_path):
    """Restored for a three-member cluster (by etcdutl, once for the direct replay; the replay
    through etcd restores a one-member copy first). Both dbs are served by a member of their own."""
    source = build_source(tmp_path, mixed_before, mixed_after, extra_args=BIG)
    cluster = ",".join(f"m{i}=http://127.0.0.{i + 1}:2380" for i in range(3))
    results = {}
    for mode in ("etcd", "direct"):
        data_dir = restore(tmp_path, source.bucket, mode, "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                           name="m0", cluster=cluster)
        members = read_etcd_db(data_dir / "member" / "snap" / "db").members
        assert sorted(m["name"] for m in members) == ["m0", "m1", "m2"]
        alone = tmp_path / f"alone-{mode}" / f"{NAME}.etcd"
        subprocess.run([str(sf.etcd_bin_dir() / "etcdutl"), "snapshot", "restore",
                        str(data_dir / "member" / "snap" / "db"), "--skip-hash-check", "--data-dir", str(alone),
                        "--name", NAME, "--initial-cluster", f"{NAME}=http://localhost:2380"],
                       check=True, capture_output=True)
        results[mode] = served(alone)
    assert results["direct"].hash == results["etcd"].hash
    assert results["direct"].revision == results["etcd"].revision == source.expected.revision
    assert results["direct"].dump.kvs == source.expected.kvs


def test_a_failure_while_the_full_is_restored_stops_the_delta_prefetch(tmp_path, monkeypatch):
    """The deltas are fetched and decoded while etcdutl restores the full snapshot. When etcdutl
    fails (here on a db file that is not a snapshot: the fetched full is overwritten just before
    the real etcdutl runs), the prefetch is stopped: no fetch or decode thread is left, the
    error is etcdutl's in one line, and nothing is left in the temp dir or beside the data dir."""
    import threading

    from etcdbr.restore.restorer import Restorer

    source = build_source(tmp_path, mixed_before, mixed_after, parts=4, extra_args=BIG)
    real = Restorer._restore_full
    seen: list[str] = []

    def broken_full(self, release, db, full, target, **kw):
        seen.extend(t.name for t in threading.enumerate())
        db.write_bytes(b"not a bbolt db" * 4096)
        return real(self, release, db, full, target, **kw)

    monkeypatch.setattr(Restorer, "_restore_full", broken_full)
    data_dir = tmp_path / "restored" / f"{NAME}.etcd"
    temp = tmp_path / "restore-tmp"
    result = CliRunner().invoke(cli, [
        "restore", "--storage-provider=Local", f"--store-container={source.bucket}", "--store-prefix=etcd",
        f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={temp}",
        f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={NAME}",
        f"--initial-cluster={NAME}=http://localhost:2380", "--delta-replay=direct"])
    assert result.exit_code != 0 and result.exception is None or isinstance(result.exception, SystemExit)
    assert any(n.startswith("delta-") for n in seen), seen  # the prefetch ran while etcdutl did
    errors = [ln for ln in result.output.splitlines() if "restoring full snapshot" in ln]
    assert len(errors) == 1 and "etcdutl:" in errors[0], result.output
    assert "Traceback" not in result.output
    assert not [t.name for t in threading.enumerate() if t.name.startswith("delta-")]
    assert DIRECT_LINE not in result.output  # nothing was applied
    assert not temp.exists() or not any(temp.iterdir())
    assert not data_dir.exists() and not (data_dir.parent / f"{NAME}.etcd.part").exists()
