"""Three sidecars on a real three-member etcd cluster: only the sidecar of etcd's Raft leader backs
up, and another one takes over when the leader member stops."""

from __future__ import annotations

import json
import time

import pytest
from server_helpers import ServerProcess, deltas, fulls, s3_env, s3_objects, s3_store_args

pytestmark = pytest.mark.integration

STORE_PREFIX = "ha"


def _role(server: ServerProcess) -> str | None:
    """The role a sidecar reports in ``/sync/status`` (Leader, Follower or Unknown)."""
    status, _, body = server.get("/sync/status", timeout=5)
    return None if status != 200 else json.loads(body).get("role")


def test_only_the_leaders_sidecar_snapshots_and_another_takes_over(tmp_path, etcd_cluster_factory, s3_server,
                                                                    s3_bucket):
    cluster = etcd_cluster_factory(3)
    env = s3_env(s3_server, tmp_path)
    # With backup sync configured, /sync/status reports each sidecar's role, and the copier must
    # follow the backup leader too.
    secondary_bucket = s3_server.create_bucket(s3_bucket + "-2")
    env.update(s3_env(s3_server, tmp_path, prefix="SECONDARY_"))
    servers = []
    try:
        for i, member in enumerate(cluster.members):
            servers.append(ServerProcess(tmp_path, [
                "--endpoints", member.client_url, *s3_store_args(s3_server, s3_bucket, STORE_PREFIX),
                "--secondary-storage-provider", "S3", "--secondary-store-container", secondary_bucket,
                "--secondary-store-prefix", STORE_PREFIX,
                "--secondary-store-endpoint-override", s3_server.endpoint, "--backup-sync-enabled",
                "--schedule", "0 0 1 1 *", "--delta-snapshot-period", "1s", "--reelection-period", "1.1s",
                "--garbage-collection-period", "0s",
            ], env, name=f"sidecar{i}").start())
        leader = cluster.leader_index()
        t0 = time.monotonic()
        for server in servers:
            server.wait_healthy(90)  # followers are healthy too
        servers[leader].wait_for(lambda: _role(servers[leader]) == "Leader", 30, "leader role")
        elected_seconds = time.monotonic() - t0
        for i, server in enumerate(servers):
            if i != leader:
                assert _role(server) == "Follower"
                status, _, body = server.get("/snapshot/full")
                # every sidecar here shares 127.0.0.1: the leader's cannot be found at its member's host
                # (forwarding: tests/integration/test_go_dropin_server.py)
                assert status == 503 and json.loads(body)["error"].startswith("not the backup leader: ")
                # a follower answers /snapshot/latest from the store
                assert server.get("/snapshot/latest")[0] == 200

        cluster.etcdctl("put", "/ha/before", "1")
        servers[leader].wait_for(lambda: servers[leader].get_json("/snapshot/latest")["deltaSnapshots"], 30, "a delta")
        # a revision newer than the delta, so the full never ties with it in the listing order
        cluster.etcdctl("put", "/ha/between", "1")
        first = servers[leader].get_json("/snapshot/full")
        # an on-demand copier run on the leader; followers have no copier
        run = servers[leader].get_json("/snapshot/sync")
        assert isinstance(run, dict) and run
        status = servers[leader].get_json("/sync/status")
        assert status["enabled"] and status["active"] and status["role"] == "Leader"
        assert status["secondary"]["endpoint"] == f"S3/{secondary_bucket}"
        for i, server in enumerate(servers):
            if i != leader:
                assert server.get("/snapshot/sync")[0] == 503
                assert server.get_json("/sync/status")["active"] is False
        for i, server in enumerate(servers):
            uploads = server.log_text().count("snapshot uploaded")
            assert (uploads > 0) == (i == leader), (i, leader, server.tail())

        # the leader member stops: its sidecar stops backing up, another sidecar takes over
        cluster.stop_member(leader)
        new_leader = cluster.leader_index()
        assert new_leader != leader
        t1 = time.monotonic()
        servers[new_leader].wait_for(lambda: _role(servers[new_leader]) == "Leader", 30, "takeover")
        servers[new_leader].wait_healthy(60)
        takeover_seconds = time.monotonic() - t1
        servers[leader].wait_for(lambda: not servers[leader].healthy(), 30,
                                 "the old leader's sidecar to turn unhealthy")
        assert _role(servers[leader]) == "Unknown"
        cluster.etcdctl("put", "/ha/after", "2")
        servers[new_leader].wait_for(
            lambda: any(d.start_revision > first["lastRevision"]
                        for d in deltas(s3_objects(s3_server, s3_bucket, STORE_PREFIX))),
            30, "a delta from the new leader")
        assert "snapshot uploaded" in servers[new_leader].log_text()
        old_uploads = servers[leader].log_text().count("snapshot uploaded")

        snaps = [s for s in s3_objects(s3_server, s3_bucket, STORE_PREFIX) if not s.is_chunk]
        assert first["snapName"] in {s.snap_name for s in fulls(snaps)}
        # one chain without gaps or overlaps across the change of leader
        prev = None
        for snap in snaps:
            if snap.kind.value == "Incr":
                assert prev is not None and snap.start_revision == prev.last_revision + 1, (prev, snap)
            prev = snap
        # the copier ran on the leader only: the secondary has the primary's snapshots
        servers[new_leader].wait_for(
            lambda: {s.snap_name for s in s3_objects(s3_server, secondary_bucket, STORE_PREFIX)} >= {first["snapName"]},
            30, "the secondary to hold the leader's full snapshot")

        for server in servers:
            assert server.terminate(timeout=30) == 0
        assert servers[leader].log_text().count("snapshot uploaded") == old_uploads
        print(f"elected+healthy {elected_seconds:.1f}s, takeover {takeover_seconds:.1f}s")
    finally:
        for server in servers:
            server.stop()
