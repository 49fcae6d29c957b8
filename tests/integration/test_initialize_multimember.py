"""``initialize`` for members of a real three-member etcd cluster.

* A member that was down while snapshots were taken is behind the store but not broken: its
  data dir is not touched, and Raft catches it up.
* A member whose data dir was wiped while the others run is never restored from a snapshot: it
  is replaced through etcd's membership API (removed, added back as a learner, synced from the
  leader, promoted) and then starts with the harness's usual flags. A sync that fails takes the
  learner out again and keeps the old data dir aside.
* Members that hold data but have no leader are not joined by a member restored from a snapshot.
* When the whole cluster lost its data, every member restores the same chain (a full snapshot
  and a delta), without waiting for a quorum when the members up hold only restored data, and
  the cluster starts from the restored data dirs.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import StoreConfig
from etcdbr.metrics import REGISTRY
from etcdbr.restore.bbolt import read_etcd_db
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration


def run(argv):
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def args(cluster, i: int, bucket: Path, *extra: str) -> list[str]:
    m = cluster.members[i]
    initial = ",".join(f"{x.name}={x.peer_url}" for x in cluster.members)
    return ["initialize", "--storage-provider=Local", f"--store-container={bucket}", "--store-prefix=etcd",
            f"--data-dir={m.data_dir}", f"--restoration-temp-snapshots-dir={bucket.parent / 'restore-tmp'}",
            f"--etcd-bin-dir={sf.etcd_bin_dir()}", f"--name={m.name}", f"--initial-cluster={initial}",
            f"--initial-cluster-token={cluster.token}", f"--initial-advertise-peer-urls={m.peer_url}",
            f"--service-endpoints={','.join(cluster.client_urls)}", "--validation-mode=sanity", *extra]


def store(bucket: Path):
    return open_store(StoreConfig(provider="Local", container=str(bucket), prefix="etcd"))


def fingerprint(data_dir: Path) -> dict:
    return {str(p.relative_to(data_dir)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted([data_dir, *data_dir.rglob("*")])}


def put(cluster, prefix: str, n: int) -> None:
    c = sf.Client(cluster.running_members()[0].client_url)
    try:
        for k in range(n):
            c.kv.Put(sf.pb.PutRequest(key=f"{prefix}{k:03d}".encode(), value=f"{prefix}-{k}".encode()), timeout=30)
    finally:
        c.close()


def follower(cluster) -> int:
    leader = cluster.leader_index()
    return next(i for i in range(len(cluster.members)) if i != leader)


def members(cluster) -> list[dict]:
    return json.loads(cluster.etcdctl("member", "list", "-w", "json").stdout)["members"]


def peer_up(member, timeout: float = 20.0) -> None:
    """Wait until a member without a leader serves its peer URL (it serves no client before)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(member.peer_url + "/version", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_equal(member, reference, timeout: float = 20.0) -> sf.Dump:
    """The member's keyspace once it equals the reference member's (a linearizable read on a
    member that is still catching up waits or fails, so poll)."""
    deadline = time.monotonic() + timeout
    want = sf.dump(reference.client_url)
    while True:
        try:
            got = sf.dump(member.client_url)
            if got == want or time.monotonic() > deadline:
                return got
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.2)


def test_member_behind_the_store_is_left_to_raft(etcd_cluster_factory, tmp_path):
    cluster = etcd_cluster_factory(3)
    put(cluster, "before/", 10)
    i = follower(cluster)
    m = cluster.members[i]
    cluster.stop_member(i)
    put(cluster, "while-down/", 30)
    snaps = sf.SnapshotFactory(cluster.leader().client_url)
    bucket = tmp_path / "bucket"
    full = snaps.full(store(bucket))
    put(cluster, "after-full/", 10)
    [delta] = snaps.deltas(store(bucket), full, parts=1)
    assert read_etcd_db(m.data_dir / "member" / "snap" / "db").revision < delta.last_revision
    before = fingerprint(m.data_dir)

    result = run(args(cluster, i, bucket))
    assert result.exit_code == 0, result.output
    assert "data dir is valid; leaving it untouched" in result.stderr
    assert "RevisionBehind" not in result.stderr and "replay its WAL" not in result.stderr
    assert fingerprint(m.data_dir) == before

    cluster.start_member(i)
    got = wait_equal(m, cluster.leader())
    assert got == sf.dump(cluster.leader().client_url)
    assert got.kvs[b"while-down/029"][0] == b"while-down/-29" and b"after-full/009" in got.kvs


def membership_metrics() -> dict:
    return {(name, ok): REGISTRY.get_sample_value(name, {"succeeded": ok}) or 0.0
            for name in ("etcdbr_is_learner_count_total", "etcdbr_add_learner_duration_seconds_count",
                         "etcdbr_member_promote_duration_seconds_count", "etcdbr_member_remove_duration_seconds_count")
            for ok in ("true", "false")}


def test_wiped_member_of_a_live_cluster_rejoins_through_membership(etcd_cluster_factory, tmp_path):
    cluster = etcd_cluster_factory(3)
    put(cluster, "a/", 20)
    bucket = tmp_path / "bucket"
    sf.SnapshotFactory(cluster.leader().client_url).full(store(bucket))  # there is a snapshot; it must not be used
    before = membership_metrics()
    i = follower(cluster)
    m = cluster.members[i]
    old_id = m.member_id()
    cluster.stop_member(i)
    shutil.rmtree(m.data_dir)
    m.data_dir.mkdir()  # wiped: an empty data dir
    put(cluster, "b/", 20)

    # TLS peer URLs: no automatic replacement (no peer certificates), but the commands to do it.
    tls = [a if not a.startswith("--initial-advertise-peer-urls=") else a.replace("http://", "https://")
           for a in args(cluster, i, bucket)]
    refused = run(tls)
    assert refused.exit_code == 1, refused.output
    assert "replace it by hand" in refused.output and f"member remove {old_id:x}" in refused.output
    assert m.data_dir.is_dir() and not any(m.data_dir.iterdir()) and len(members(cluster)) == 3

    # Then with the member's peer port taken: the etcd that would sync it cannot start, and the
    # learner is taken out again. The old data dir was empty: nothing to keep aside.
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the old member's TIME_WAITs
    blocker.bind(("127.0.0.1", m.peer_port))
    blocker.listen()
    try:
        failed = run(args(cluster, i, bucket))
    finally:
        blocker.close()
    assert failed.exit_code == 1 and "address already in use" in failed.output, failed.output
    assert "removed the learner again after the join failed" in failed.stderr
    assert [x.get("isLearner", False) for x in members(cluster)] == [False, False]
    assert not m.data_dir.exists() and list(m.data_dir.parent.glob(f"{m.data_dir.name}.aside-*")) == []

    result = run(args(cluster, i, bucket))
    assert result.exit_code == 0, result.output
    assert "status=NotExist" in result.stderr
    assert "replaced through etcd's membership API" in result.stderr
    assert "removed the member from the cluster" in failed.stderr and f"member_id={old_id:x}" in failed.stderr
    assert "member rejoined the cluster" in result.stderr
    # The Go tool's membership metrics: two learner adds (the failed join and this one), one
    # promotion that failed and one that worked, the old member's removal.
    after = membership_metrics()
    assert {k: after[k] - before[k] for k in after} == {
        ("etcdbr_is_learner_count_total", "true"): 2, ("etcdbr_is_learner_count_total", "false"): 0,
        ("etcdbr_add_learner_duration_seconds_count", "true"): 2,
        ("etcdbr_add_learner_duration_seconds_count", "false"): 0,
        ("etcdbr_member_promote_duration_seconds_count", "true"): 1,
        ("etcdbr_member_promote_duration_seconds_count", "false"): 1,
        ("etcdbr_member_remove_duration_seconds_count", "true"): 1,
        ("etcdbr_member_remove_duration_seconds_count", "false"): 0,
    }
    assert REGISTRY.get_sample_value("etcdbr_is_learner") == 0
    assert "restoring base snapshot" not in result.stderr and "restore done" not in result.stderr
    listed = {int(x["ID"]): x for x in members(cluster)}
    assert old_id not in listed and len(listed) == 3
    # the name may still be empty: the member publishes it when its etcd runs
    [new] = [x for x in listed.values() if x["peerURLs"] == [m.peer_url]]
    assert not new.get("isLearner") and new.get("name", "") in ("", m.name)
    assert not list(m.data_dir.parent.glob(f"{m.data_dir.name}.replaced-*"))  # the aside copy is gone

    again = run(args(cluster, i, bucket))  # the synced data dir is a valid one
    assert again.exit_code == 0 and "data dir is valid; leaving it untouched" in again.stderr, again.output

    put(cluster, "c/", 5)
    cluster.start_member(i)  # with the harness's usual --initial-cluster-state=new: the WAL decides
    assert m.member_id() == int(new["ID"])
    assert {int(x["ID"]): x.get("name") for x in members(cluster)}[int(new["ID"])] == m.name
    got = wait_equal(m, cluster.leader())
    assert got == sf.dump(cluster.leader().client_url) and b"c/004" in got.kvs and b"a/000" in got.kvs
    assert cluster.etcdctl("endpoint", "health", "--cluster").returncode == 0


def test_no_snapshot_restore_beside_members_that_hold_data(etcd_cluster_factory, tmp_path):
    cluster = etcd_cluster_factory(3)
    put(cluster, "a/", 10)
    bucket = tmp_path / "bucket"
    sf.SnapshotFactory(cluster.leader().client_url).full(store(bucket))
    cluster.stop()
    shutil.rmtree(cluster.members[1].data_dir)
    cluster.start_member(0, wait=False)  # alone: data, no leader
    try:
        peer_up(cluster.members[0])
        result = run(args(cluster, 1, bucket, "--quorum-wait=2s"))
    finally:
        cluster.stop_member(0)
    assert result.exit_code == 1, result.output
    assert "hold data but have no leader" in result.output and f"m0 at {cluster.members[0].peer_url}" in result.output
    assert not cluster.members[1].data_dir.exists()


def test_whole_cluster_loss_restores_every_member_from_the_store(etcd_cluster_factory, tmp_path):
    cluster = etcd_cluster_factory(3)
    put(cluster, "a/", 30)
    bucket = tmp_path / "bucket"
    snaps = sf.SnapshotFactory(cluster.leader().client_url)
    full = snaps.full(store(bucket))
    put(cluster, "b/", 20)
    [delta] = snaps.deltas(store(bucket), full, parts=1)
    expected = sf.dump(cluster.leader().client_url)
    assert expected.revision == delta.last_revision
    cluster.stop()
    for m in cluster.members:
        shutil.rmtree(m.data_dir)

    # m0 first, with nobody up; then m1 and m2 while m0 already runs on its restored data dir (no
    # leader, no data of its own yet): they need not wait for a quorum that only they can make.
    for i, wait in ((0, "0s"), (1, "60s"), (2, "60s")):
        started = time.monotonic()
        result = run(args(cluster, i, bucket, f"--quorum-wait={wait}"))
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 30
        assert "loss of the whole cluster" in result.stderr
        assert f"restore done at revision {delta.last_revision}" in result.stderr
        if i == 0:
            cluster.start_member(0, wait=False)
            peer_up(cluster.members[0])

    cluster.start()
    for m in cluster.members:
        got = sf.dump(m.client_url)
        assert got.kvs == expected.kvs and got.revision == expected.revision
