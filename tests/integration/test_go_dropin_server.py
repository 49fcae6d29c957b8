"""The server where the Go etcdbrctl runs today (etcd-druid, etcd-wrapper): what it must do the
way the Go server does, or better where the Go server fails. Real etcd, the server as a
subprocess, a Local store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from server_helpers import EtcdWriter, ServerProcess

from etcdbr.compression import decompress_bytes
from etcdbr.config import StoreConfig
from etcdbr.delta import decode_delta
from etcdbr.snapstore.local import LocalStore

pytestmark = pytest.mark.integration

NO_SCHEDULED_FULL = "0 0 1 1 *"






def local_store(container: Path, prefix: str = "dropin") -> LocalStore:
    return LocalStore(StoreConfig(provider="Local", container=str(container), prefix=prefix))


def test_on_demand_delta_with_scheduled_deltas_off(tmp_path, etcd_factory, servers):
    """upstream issue #965: the Go server answers /snapshot/delta with 500 when
    --delta-snapshot-period is below 1s; this one takes the delta."""
    etcd = etcd_factory()
    container = tmp_path / "store"
    server = servers.start(tmp_path, [
        "--endpoints", etcd.client_url, "--storage-provider", "Local", "--store-container", str(container),
        "--store-prefix", "dropin", "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "0s",
    ])
    server.wait_healthy(60)
    full = server.get_json("/snapshot/latest")["fullSnapshot"]
    assert full is not None

    assert server.get_json("/snapshot/delta") is None  # nothing written since the full snapshot

    writer = EtcdWriter(etcd.client_url, "/od/")
    first = [writer.put_one() for _ in range(5)]
    delta = server.get_json("/snapshot/delta")
    assert delta["kind"] == "Incr"
    assert (delta["startRevision"], delta["lastRevision"]) == (full["lastRevision"] + 1, first[-1][2])

    second = [writer.put_one() for _ in range(3)]
    time.sleep(1.5)  # no watch runs between requests: nothing is taken on its own
    store = local_store(container)
    assert [s.kind.value for s in store.list()] == ["Full", "Incr"]
    delta2 = server.get_json("/snapshot/delta")
    assert (delta2["startRevision"], delta2["lastRevision"]) == (delta["lastRevision"] + 1, second[-1][2])

    snaps = store.list()
    assert [s.snap_name for s in snaps[1:]] == [delta["snapName"], delta2["snapName"]]
    for snap, writes in zip(snaps[1:], (first, second), strict=True):
        with store.fetch(snap) as stream:
            events = decode_delta(decompress_bytes(stream.read(), snap.compression_suffix))
        assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == writes
    latest = server.get_json("/snapshot/latest")
    assert [d["snapName"] for d in latest["deltaSnapshots"]] == [delta["snapName"], delta2["snapName"]]
    assert server.terminate(timeout=30) == 0
    assert "delta snapshots are disabled" not in server.log_text()


def metric_values(server) -> dict[str, float]:
    status, _, body = server.get("/metrics")
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_cluster_size_learner_and_network_metrics_have_real_values(tmp_path, etcd_factory, servers):
    etcd = etcd_factory()
    # --initial-cluster names three members (the Go tool's value at start); etcd lists one
    three = ",".join(f"m{i}=http://127.0.0.1:{2380 + i}" for i in range(3))
    server = servers.start(tmp_path, [
        "--endpoints", etcd.client_url, "--storage-provider", "Local", "--store-container", str(tmp_path / "store"),
        "--initial-cluster", three, "--schedule", NO_SCHEDULED_FULL, "--reelection-period", "1.1s",
    ])
    server.wait_healthy(60)
    server.wait_for(lambda: metric_values(server).get("etcdbr_cluster_size") == 1.0, 20, "cluster size from etcd")
    values = metric_values(server)
    assert values["etcdbr_is_learner"] == 0.0
    assert values["etcdbr_network_received_bytes"] > 0 and values["etcdbr_network_transmitted_bytes"] > 0
    assert 'etcdbr_snapshotter_failure{error=""}' in values
    assert not [n for n in values if n.startswith("etcdbr_snapshotter_failure_total")]


# -- /config: etcd's member configuration for etcd-wrapper ------------------------------------
def druid_etcd_conf(path: Path, members: dict[str, tuple[str, str]], *, prefix: str = "") -> Path:
    """etcd's config file in etcd-druid's layout: every member's advertised URLs keyed by name."""
    conf = {
        "name": "etcd-config-name-not-used",
        "data-dir": "/var/etcd/data/new.etcd",
        "snapshot-count": 75000,
        "quota-backend-bytes": 8589934592,
        "enable-v2": False,
        "listen-client-urls": "http://0.0.0.0:2379",
        "initial-cluster-token": "etcd-cluster",
        "initial-cluster": ",".join(f"{n}={peer}" for n, (peer, _) in members.items()),
        "initial-advertise-peer-urls": {n: [peer] for n, (peer, _) in members.items()},
        "advertise-client-urls": {n: [client] for n, (_, client) in members.items()},
    }
    if prefix:
        conf["member-name-prefix"] = prefix
    path.write_text(yaml.safe_dump(conf))
    return path


def test_config_renders_the_members_etcd_configuration_as_the_go_server_does(tmp_path, etcd_factory, servers):
    etcd = etcd_factory()
    members = {f"etcd-main-{p}": (f"http://{p}.peers:2380", f"http://{p}.clients:2379") for p in ("pod-0", "pod-1")}
    conf = druid_etcd_conf(tmp_path / "etcd.conf.yaml", {"etcd-main-pod-0": members["etcd-main-pod-0"]},
                           prefix="etcd-main")
    server = servers.start(tmp_path, ["--endpoints", etcd.client_url, "--reelection-period", "1.1s"],
                    {"ETCD_CONF": str(conf), "POD_NAME": "pod-0", "POD_NAMESPACE": "shoot--a"})
    server.wait_healthy(60)
    status, headers, body = server.get("/config")
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain")
    served = yaml.safe_load(body)
    assert served == {
        "name": "etcd-main-pod-0",                                   # member-name-prefix + POD_NAME
        "data-dir": "/var/etcd/data/new.etcd", "snapshot-count": 75000, "quota-backend-bytes": 8589934592,
        "enable-v2": False, "listen-client-urls": "http://0.0.0.0:2379", "initial-cluster-token": "etcd-cluster",
        "member-name-prefix": "etcd-main",
        "initial-cluster": "etcd-main-pod-0=http://pod-0.peers:2380",
        "initial-advertise-peer-urls": "http://pod-0.peers:2380",    # this member's, comma-joined
        "advertise-client-urls": "http://pod-0.clients:2379",
        "initial-cluster-state": "new",                              # a cluster of one
    }
    top_keys = [line.split(":", 1)[0] for line in body.decode().splitlines() if line and line[0] not in " -"]
    assert top_keys == sorted(served)  # sorted keys, as the Go server's YAML
    # this tool's own configuration moved
    own = yaml.safe_load(server.get("/effective-config")[2])
    assert own["endpoints"] == [etcd.client_url]


def test_config_fails_without_pod_name_as_the_go_server_does(tmp_path, monkeypatch):
    """(A server does not even start so: the member's identity comes from the same file.)"""
    import asyncio

    from etcdbr.config import Config
    from etcdbr.errors import ConfigError
    from etcdbr.server import etcdconfig

    conf = druid_etcd_conf(tmp_path / "etcd.conf.yaml", {"m": ("http://m:2380", "http://m:2379")})
    monkeypatch.setenv("ETCD_CONF", str(conf))
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(ConfigError, match="POD_NAME is not set"):
        asyncio.run(etcdconfig.render(Config()))
    monkeypatch.setenv("POD_NAME", "other")
    with pytest.raises(ConfigError, match="initial-advertise-peer-urls has no URLs for member 'other'"):
        asyncio.run(etcdconfig.render(Config()))


def test_config_initial_cluster_and_state_follow_the_cluster_during_a_scale_up(tmp_path, etcd_cluster_factory,
                                                                               monkeypatch):
    """A two-member cluster scaling to four: the third member's /config names the members that
    exist and itself (not the fourth, which has not joined), with state new, then existing once it
    was added as a learner."""
    import asyncio

    from etcdbr.config import Config
    from etcdbr.server import etcdconfig

    cluster = etcd_cluster_factory(2)
    members = {m.name: (m.peer_url, m.client_url) for m in cluster.members}
    members["m2"] = ("http://127.0.0.1:1", "http://127.0.0.1:2")
    members["m3"] = ("http://127.0.0.1:3", "http://127.0.0.1:4")
    conf = druid_etcd_conf(tmp_path / "etcd.conf.yaml", members)
    monkeypatch.setenv("ETCD_CONF", str(conf))
    monkeypatch.setenv("POD_NAME", "m2")
    config = Config()
    config.etcd.endpoints = ["http://127.0.0.1:9"]           # this member's etcd: not running yet
    config.etcd.service_endpoints = [cluster.members[0].client_url]

    served = yaml.safe_load(asyncio.run(etcdconfig.render(config)))
    want_cluster = ",".join(f"{n}={members[n][0]}" for n in ("m0", "m1", "m2"))
    assert (served["name"], served["initial-cluster"], served["initial-cluster-state"]) == ("m2", want_cluster, "new")

    # etcd refuses membership changes ("unhealthy cluster") for 5s after its members connected
    deadline = time.monotonic() + 30
    while cluster.etcdctl("member", "add", "m2", "--learner", "--peer-urls=http://127.0.0.1:1",
                          check=False).returncode != 0:
        assert time.monotonic() < deadline, "etcd never accepted the learner"
        time.sleep(0.5)
    served = yaml.safe_load(asyncio.run(etcdconfig.render(config)))
    assert (served["initial-cluster"], served["initial-cluster-state"]) == (want_cluster, "existing")

    # etcd unreachable (a first bootstrap): the file's initial cluster, state new
    config.etcd.service_endpoints = ["http://127.0.0.1:9"]
    served = yaml.safe_load(asyncio.run(etcdconfig.render(config)))
    assert served["initial-cluster"] == conf_initial(conf) and served["initial-cluster-state"] == "new"


def conf_initial(conf: Path) -> str:
    return yaml.safe_load(conf.read_text())["initial-cluster"]


# -- followers forward snapshot triggers to the backup leader ---------------------------------
class SidecarAt(ServerProcess):
    """A sidecar on ``host`` (another loopback address) and a given port: the Go tool reaches the
    leader's sidecar at its etcd member's host and this sidecar's own --server-port."""

    def __init__(self, workdir: Path, host: str, port: int, args: list[str], **kwargs) -> None:
        super().__init__(workdir, args, **kwargs)
        self.host, self.port = host, port
        self.args = ["server", "--server-host", host, "--server-port", str(port), *args]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def test_follower_forwards_snapshot_triggers_to_the_leader(tmp_path, etcd_cluster_factory, servers):
    from services import free_port

    cluster = etcd_cluster_factory(2)
    leader_i = cluster.leader_index()
    leader, follower = cluster.members[leader_i], cluster.members[1 - leader_i]
    port = free_port()
    store = ["--storage-provider", "Local", "--store-container", str(tmp_path / "store"), "--store-prefix", "fwd",
             "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "0s", "--reelection-period", "1.1s"]
    # every member's client URL is on 127.0.0.1: the leader's sidecar listens there, the
    # follower's on 127.0.0.2 with the same port
    lead = SidecarAt(tmp_path, "127.0.0.1", port, ["--endpoints", leader.client_url, *store], name="leader")
    follow = SidecarAt(tmp_path, "127.0.0.2", port, ["--endpoints", follower.client_url, *store], name="follower")
    servers.extend([lead.start(), follow.start()])
    lead.wait_healthy(60)
    follow.wait_healthy(60)
    startup_full = lead.get_json("/snapshot/latest")["fullSnapshot"]

    writer = EtcdWriter(leader.client_url, "/fwd/")
    writer.put_one()  # a new revision: the forwarded full snapshot is a new one, not the startup one again
    status, _, body = follow.get("/snapshot/full")
    assert status == 200, body
    full = json.loads(body)
    assert full["kind"] == "Full" and full["snapName"] != startup_full["snapName"]
    writes = [writer.put_one() for _ in range(3)]
    status, _, body = follow.get("/snapshot/delta")
    assert status == 200, body
    assert json.loads(body)["lastRevision"] == writes[-1][2]
    # the leader took both: they are in its in-memory view
    latest = lead.get_json("/snapshot/latest")
    assert latest["fullSnapshot"]["snapName"] == full["snapName"] and len(latest["deltaSnapshots"]) == 1
    assert "forwarding the request to the backup leader" in follow.log_text()
    assert "full snapshot uploaded" not in follow.log_text()

    # the leader's sidecar gone: one line why, 503
    lead.stop()
    status, _, body = follow.get("/snapshot/full")
    assert status == 503 and json.loads(body)["error"].startswith("not the backup leader: the backup leader at "
                                                                  f"http://127.0.0.1:{port}")
