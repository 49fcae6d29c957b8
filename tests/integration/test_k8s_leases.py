"""Kubernetes leases as the Go etcdbrctl keeps them for etcd-druid: the full and delta snapshot
revision leases and the member heartbeat lease, with the Go tool's names, holder identities,
annotations and timing.

No kube-apiserver can be installed from the package registries here: the API is the tests' own
stand-in of the ``coordination.k8s.io/v1`` Lease endpoints (``tests/services/leaseapi.py``),
reached through a real kubeconfig file by the tool's real Kubernetes client (lightkube)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone

import pytest
from server_helpers import EtcdWriter, ServerProcess

from etcdbr.server import leases as leases_mod
from etcdbr.server.leases import LeaseKeeper, LeaseSettings, micro_time
from etcdbr.snapshot import Kind, new_snapshot
from services.leaseapi import LeaseAPI

pytestmark = pytest.mark.integration

NS = "shoot--dev--main"
NO_SCHEDULED_FULL = "0 0 1 1 *"


@pytest.fixture
def lease_api():
    api = LeaseAPI().start()
    yield api
    api.stop()




def wait_until(predicate, timeout: float, what: str):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_server_keeps_the_snapshot_and_member_leases(tmp_path, etcd_factory, lease_api, servers):
    etcd = etcd_factory()
    lease_api.create(NS, "etcd-main-full-snap")
    lease_api.create(NS, "etcd-main-delta-snap")
    lease_api.create(NS, "etcd-main-0")
    env = {"KUBECONFIG": str(lease_api.kubeconfig(tmp_path / "kubeconfig", NS)), "POD_NAMESPACE": NS,
           "POD_NAME": "etcd-main-0"}
    server = ServerProcess(tmp_path, [
        "--endpoints", etcd.client_url, "--storage-provider", "Local", "--store-container", str(tmp_path / "store"),
        "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "1s", "--reelection-period", "1.1s",
        "--enable-snapshot-lease-renewal=true", "--full-snapshot-lease-name=etcd-main-full-snap",
        "--delta-snapshot-lease-name=etcd-main-delta-snap", "--enable-member-lease-renewal=true",
        "--k8s-heartbeat-duration=1s"], env).start()
    servers.append(server)
    server.wait_healthy(60)

    # the full snapshot lease: the startup full's revision, renewed at its creation time
    full = server.get_json("/snapshot/latest")["fullSnapshot"]
    lease = wait_until(lambda: (lease_api.get(NS, "etcd-main-full-snap")["spec"].get("holderIdentity")
                                and lease_api.get(NS, "etcd-main-full-snap")), 20, "the full snapshot lease")
    assert lease["spec"]["holderIdentity"] == str(full["lastRevision"])
    created = datetime.fromisoformat(full["createdOn"].replace("Z", "+00:00"))
    assert lease["spec"]["renewTime"] == micro_time(created)
    patches = [b for m, p, b in lease_api.requests if m == "PATCH" and p.endswith("/etcd-main-full-snap")]
    assert patches and all(b["metadata"]["resourceVersion"] for b in patches)  # optimistic lock, as the Go tool

    # the delta snapshot lease: the latest delta's revision
    writer = EtcdWriter(etcd.client_url, "/lease/")
    last = [writer.put_one() for _ in range(5)][-1][2]
    wait_until(lambda: lease_api.get(NS, "etcd-main-delta-snap")["spec"].get("holderIdentity") == str(last), 20,
               f"the delta snapshot lease at revision {last}")
    delta_lease = lease_api.get(NS, "etcd-main-delta-snap")
    assert datetime.fromisoformat(delta_lease["spec"]["renewTime"].replace("Z", "+00:00")) > created

    # the member lease: member id, cluster id and role from etcd, every heartbeat
    status = json.loads(etcd.etcdctl("endpoint", "status", "-w", "json").stdout)[0]["Status"]
    holder = f"{status['header']['member_id']:x}:{status['header']['cluster_id']:x}:Leader"
    member = wait_until(lambda: lease_api.get(NS, "etcd-main-0")["spec"].get("holderIdentity") == holder
                        and lease_api.get(NS, "etcd-main-0"), 20, "the member lease")
    assert member["metadata"]["annotations"] == {"member.etcd.gardener.cloud/tls-enabled": "false"}
    first = member["spec"]["renewTime"]
    wait_until(lambda: lease_api.get(NS, "etcd-main-0")["spec"]["renewTime"] != first, 10, "a second heartbeat")
    assert server.terminate(timeout=30) == 0
    log_text = server.log_text()
    assert "renewed full snapshot lease" in log_text and "accepted for compatibility" not in log_text
    assert lease_api.token not in log_text


def test_missing_namespace_or_client_is_one_line(tmp_path, etcd_factory):
    from click.testing import CliRunner

    from etcdbr.cli.main import cli

    result = CliRunner().invoke(cli, ["server", "--enable-member-lease-renewal=true",
                                      "--endpoints=http://127.0.0.1:1", f"--server-port={_free()}"],
                                env={"POD_NAMESPACE": "", "KUBECONFIG": str(tmp_path / "none")})
    assert result.exit_code == 2 and result.stderr.strip().splitlines()[-1] == (
        "error: Kubernetes leases need POD_NAMESPACE (the pod's namespace)")


def _free() -> int:
    from services import free_port

    return free_port()


def _keeper(api: LeaseAPI, tmp_path, monkeypatch) -> LeaseKeeper:
    monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig", NS)))
    return LeaseKeeper(LeaseSettings(snapshot_leases=True), leases_mod.kube_client(NS), clock=lambda: 1.7e9)


def _full(rev: int):
    return new_snapshot(Kind.FULL, 0, rev, prefix="p/v2", compression_suffix=".gz",
                        created_on=datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc))


def test_full_lease_retries_a_conflict_and_never_lowers_the_revision(tmp_path, lease_api, monkeypatch):
    lease_api.create(NS, leases_mod.FULL_LEASE)

    async def scenario():
        keeper = _keeper(lease_api, tmp_path, monkeypatch)
        real_get = keeper._get
        raced = []

        async def racing_get(name):
            lease = await real_get(name)
            if not raced:  # another writer updates the lease between our read and our patch
                raced.append(lease_api.create(NS, name, spec={"holderIdentity": "5"}))
            return lease

        keeper._get = racing_get
        await keeper.update_full(_full(100))
        first = lease_api.get(NS, leases_mod.FULL_LEASE)["spec"]
        keeper._get = real_get
        await keeper.update_full(_full(50))  # an older full snapshot never lowers the holder
        return first

    assert asyncio.run(scenario()) == {"holderIdentity": "100", "renewTime": "2026-01-02T03:04:05.000000Z"}
    patches = [m for m, _, _ in lease_api.requests if m == "PATCH"]
    assert len(patches) == 2  # the first met the conflict (409) and the lease was read again; none for rev 50
    assert lease_api.get(NS, leases_mod.FULL_LEASE)["spec"]["holderIdentity"] == "100"


def test_delta_lease_holder_is_zero_without_deltas_and_missing_lease_is_an_error(tmp_path, lease_api, monkeypatch):
    lease_api.create(NS, leases_mod.DELTA_LEASE)
    deltas = [new_snapshot(Kind.INCR, 101, 180, prefix="p/v2", compression_suffix=".gz",
                           created_on=datetime.now(timezone.utc))]

    async def scenario():
        keeper = _keeper(lease_api, tmp_path, monkeypatch)
        await keeper.update_delta([])
        empty = lease_api.get(NS, leases_mod.DELTA_LEASE)["spec"]
        await keeper.update_delta(deltas)
        with pytest.raises(leases_mod.LeaseError, match="cannot fetch lease full-snapshot-revisions: 404"):
            await keeper.update_full(_full(1))
        return empty

    assert asyncio.run(scenario()) == {"holderIdentity": "0", "renewTime": "2023-11-14T22:13:20.000000Z"}
    assert lease_api.get(NS, leases_mod.DELTA_LEASE)["spec"]["holderIdentity"] == "180"


def test_compact_updates_the_full_snapshot_lease(tmp_path, lease_api, monkeypatch):
    """As the Go tool's compact: the compacted snapshot's revision in the full snapshot lease."""
    import shutil
    from pathlib import Path

    from click.testing import CliRunner

    import snapshot_factory as sf
    from etcdbr.cli.main import cli

    store = tmp_path / "store"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "go-etcdbrctl" / "gzip" / "store", store)
    lease_api.create(NS, "etcd-main-full-snap", spec={"holderIdentity": "278"})
    monkeypatch.setenv("KUBECONFIG", str(lease_api.kubeconfig(tmp_path / "kubeconfig", NS)))
    monkeypatch.setenv("POD_NAMESPACE", NS)
    result = CliRunner().invoke(cli, [
        "compact", "--storage-provider=Local", f"--store-container={store}", "--store-prefix=",
        f"--restoration-temp-snapshots-dir={tmp_path / 'rtmp'}", f"--etcd-bin-dir={sf.etcd_bin_dir()}",
        f"--data-dir={tmp_path / 'm.etcd'}", "--name=m", "--initial-cluster=m=http://localhost:2380",
        "--enable-snapshot-lease-renewal=true", "--full-snapshot-lease-name=etcd-main-full-snap"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert lease_api.get(NS, "etcd-main-full-snap")["spec"]["holderIdentity"] == "695"  # the fixture's revision
