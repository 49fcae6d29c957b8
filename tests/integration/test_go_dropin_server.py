"""The server where the Go etcdbrctl runs today (etcd-druid, etcd-wrapper): what it must do the
way the Go server does, or better where the Go server fails. Real etcd, the server as a
subprocess, a Local store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from server_helpers import EtcdWriter, ServerProcess

from etcdbr.compression import decompress_bytes
from etcdbr.config import StoreConfig
from etcdbr.delta import decode_delta
from etcdbr.snapstore.local import LocalStore

pytestmark = pytest.mark.integration

NO_SCHEDULED_FULL = "0 0 1 1 *"


@pytest.fixture
def servers():
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def _start(servers, *args, **kwargs) -> ServerProcess:
    server = ServerProcess(*args, **kwargs).start()
    servers.append(server)
    return server


def local_store(container: Path, prefix: str = "dropin") -> LocalStore:
    return LocalStore(StoreConfig(provider="Local", container=str(container), prefix=prefix))


def test_on_demand_delta_with_scheduled_deltas_off(tmp_path, etcd_factory, servers):
    """upstream issue #965: the Go server answers /snapshot/delta with 500 when
    --delta-snapshot-period is below 1s; this one takes the delta."""
    etcd = etcd_factory()
    container = tmp_path / "store"
    server = _start(servers, tmp_path, [
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
    server = _start(servers, tmp_path, [
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
