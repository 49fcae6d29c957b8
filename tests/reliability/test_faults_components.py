"""Faults while the components run: the snapshotter against a failing store or etcd, the copier
against an unreachable secondary, startup with endpoints down.

Every case ends by checking what survived, against an oracle that does not come from the code under
test: the writer's own log of the revision each write created. "No lost revision" means every
written revision after the full snapshot is in exactly one delta; "no gap" and "no duplicate" are
checked on the stored objects themselves (``verify`` and the decoded events).
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from datetime import timedelta

import pytest

from etcdbr.compression import decompress_bytes
from etcdbr.config import Config, EtcdConnectionConfig, StoreConfig, SyncConfig
from etcdbr.delta import decode_delta
from etcdbr.errors import EtcdbrError, StoreUnavailable
from etcdbr.etcd import client as etcdclient
from etcdbr.etcd import proto as rpc
from etcdbr.snapshot import Kind, chain_gaps, latest_chain
from etcdbr.snapstore import open_store
from etcdbr.verify import verify_store
from faultproxy import FaultProxy
from reliability.helpers import delta_payload, fast_open, gz, names, save_chain, snap

pytestmark = pytest.mark.integration


class Writer:
    """Single-key puts through the raw KV API, each logged with the revision etcd gave it."""

    def __init__(self, url: str, prefix: bytes = b"f/") -> None:
        self.url = url
        self.prefix = prefix
        self.revisions: list[int] = []
        self.errors = 0

    async def run(self, stop: asyncio.Event, pace: float = 0.01) -> None:
        client = etcdclient.connect(EtcdConnectionConfig(endpoints=[self.url], connection_timeout=timedelta(seconds=2)))
        n = 0
        try:
            while not stop.is_set():
                try:
                    await client.connect()
                    resp = await client.kv.Put(rpc.PutRequest(key=self.prefix + b"k%06d" % n, value=b"v%d" % n),
                                               timeout=2)
                    self.revisions.append(resp.header.revision)
                    n += 1
                except Exception:  # noqa: BLE001 - the member may be down in the middle of the test: keep trying
                    self.errors += 1
                    await client.close()
                    client = etcdclient.connect(EtcdConnectionConfig(endpoints=[self.url]))
                    await asyncio.sleep(0.1)
                await asyncio.sleep(pace)
        finally:
            await client.close()


def snapshotter_config(etcd_url: str, store) -> Config:
    config = Config()
    config.store = store.config
    config.etcd.endpoints = [etcd_url]
    config.etcd.connection_timeout = timedelta(seconds=3)
    config.snapshotter.schedule = "0 0 1 1 *"
    config.snapshotter.delta_snapshot_period = timedelta(seconds=1)
    config.snapshotter.backoff_threshold_time = timedelta(seconds=1)
    config.snapshotter.backoff_attempt_limit = 30
    return config


def assert_chain_holds(store, written: list[int]) -> tuple[int, int]:
    """The stored chain is contiguous, its events are exactly the written revisions after the
    full snapshot (none lost, none twice). Returns (full revision, deltas)."""
    report = verify_store(store)
    assert report.ok, [f"{d.kind}: {d.key}: {d.message}" for d in report.defects]
    snaps = store.list()
    full, deltas = latest_chain(snaps)
    assert full is not None
    assert chain_gaps(full, deltas) == []
    seen: list[int] = []
    for d in deltas:
        with store.fetch(d) as fh:
            events = decode_delta(decompress_bytes(fh.read(), d.compression_suffix))
        revs = [e.kv.mod_revision for e in events]
        assert revs and min(revs) >= d.start_revision and revs[-1] == d.last_revision, d.snap_name
        seen.extend(revs)
    assert len(seen) == len(set(seen)), "a revision is in two deltas (duplicate)"
    expected = sorted(r for r in written if r > full.last_revision)
    assert sorted(r for r in seen if r <= (expected[-1] if expected else 0)) == expected, (
        f"lost revisions: {sorted(set(expected) - set(seen))[:20]}")
    return full.last_revision, len(deltas)


async def run_snapshotter(store, etcd_url: str, scenario, writer_url: str | None = None) -> tuple[list[int], object]:
    """Run the snapshotter and a writer, play ``scenario(snapshotter)``, stop both, flush."""
    from etcdbr.snapshotter import Snapshotter

    snapshotter = Snapshotter(store, snapshotter_config(etcd_url, store))
    stop, stop_writer = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(snapshotter.run(stop, full_at_start=True))
    deadline = time.monotonic() + 30
    while snapshotter.latest()[0] is None:
        assert not task.done(), task.exception() if task.done() else None
        assert time.monotonic() < deadline, "no startup full snapshot"
        await asyncio.sleep(0.05)
    writer = Writer(writer_url or etcd_url)
    wtask = asyncio.create_task(writer.run(stop_writer))
    try:
        await scenario(snapshotter)
    finally:
        stop_writer.set()
        await wtask
    # Everything written must reach the store before we stop.
    deadline = time.monotonic() + 30
    while (snapshotter.collected_revision or 0) < (writer.revisions[-1] if writer.revisions else 0) or \
            snapshotter.buffered_events:
        assert time.monotonic() < deadline, "the snapshotter did not catch up"
        await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 30)
    await snapshotter.close()
    return writer.revisions, snapshotter


# -- the store fails while snapshots are being taken -----------------------------------------------
@pytest.mark.parametrize("fault", ["refuse", "cut"])
def test_store_outage_during_deltas_loses_no_revision(s3env, etcd_factory, outcome, caplog, fault):
    caplog.set_level(logging.INFO)
    etcd = etcd_factory()
    with FaultProxy.for_url(s3env.endpoint) as proxy:
        store = s3env.store(prefix=f"outage-{fault}", endpoint=proxy.url())

        fulls: list[str] = []

        async def scenario(snapshotter):
            await asyncio.sleep(1.2)
            if fault == "refuse":
                proxy.refuse()
            else:
                proxy.cut_after(200, "up")  # every request dies mid-body
            await asyncio.sleep(1.2)
            with pytest.raises(EtcdbrError):
                await snapshotter.take_full_snapshot()  # an on-demand full during the outage fails...
            await asyncio.sleep(1.3)  # at least two delta periods fail
            proxy.pass_through()
            await asyncio.sleep(0.5)
            fulls.append((await snapshotter.take_full_snapshot()).snap_name)  # ...and is retaken once it is back
            await asyncio.sleep(1.0)

        written, _ = asyncio.run(run_snapshotter(store, etcd.client_url, scenario))
    failed = [r for r in caplog.records if r.getMessage() == "delta snapshot failed"]
    assert failed, "the outage did not make any delta fail: the test proves nothing"
    direct = s3env.store(prefix=f"outage-{fault}")
    full_rev, deltas = assert_chain_holds(direct, written)  # verify covers the chain before the outage too
    assert [s.snap_name for s in direct.list() if s.is_full][-1] == fulls[0]
    assert len(verify_store(direct).chains) == 2
    assert s3env.staged() == []
    assert len(written) > 100
    outcome.record("fault", f"S3 {'refusing connections' if fault == 'refuse' else 'cutting every request'} for "
                   "2.5 delta periods while etcd is written to", "snapshotter",
                   f"failed deltas kept in memory and retried; the on-demand full failed during the outage and was "
                   f"retaken after it; {len(written)} writes, none lost or doubled; both chains contiguous, verify "
                   "clean, no multipart leftovers")


# -- etcd fails under the watch ---------------------------------------------------------------------
def test_etcd_connections_reset_mid_watch(etcd_factory, tmp_path, outcome):
    etcd = etcd_factory()
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="reset"))
    with FaultProxy.for_url(etcd.client_url) as proxy:

        async def scenario(snapshotter):
            for _ in range(3):
                await asyncio.sleep(1.0)
                proxy.drop_connections(rst=True)
            await asyncio.sleep(0.5)
            proxy.refuse()
            await asyncio.sleep(1.5)
            proxy.pass_through()
            await asyncio.sleep(1.0)
            proxy.blackhole()  # a silent partition: nothing fails, nothing arrives
            await asyncio.sleep(2.0)
            proxy.pass_through()
            await asyncio.sleep(1.0)

        # The snapshotter talks to etcd through the proxy; the writer goes straight to etcd.
        written, _ = asyncio.run(run_snapshotter(store, proxy.url(), scenario, writer_url=etcd.client_url))
        resets = proxy.stats.resets
    full_rev, deltas = assert_chain_holds(store, written)
    assert resets >= 3
    outcome.record("fault", "etcd connection reset (RST) 3 times mid-watch, refused for 1.5 s, then black-holed "
                   "(silent partition) for 2 s", "snapshotter",
                   f"watch resumed from the next revision each time; {len(written)} writes, {deltas} deltas, "
                   "no gap, no duplicate")


def test_etcd_leader_restarted_mid_watch(etcd_cluster_factory, tmp_path, outcome):
    cluster = etcd_cluster_factory(3)
    leader = cluster.leader_index()
    follower = next(i for i in range(3) if i != leader)
    watched = cluster.members[follower].client_url
    writer_url = cluster.members[3 - leader - follower].client_url
    store = open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"), prefix="leader"))

    async def scenario(snapshotter):
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.stop_member, leader)  # leader gone: a new one is elected
        await asyncio.sleep(1.5)
        await asyncio.to_thread(cluster.start_member, leader)
        await asyncio.sleep(1.0)
        # and the member the snapshotter watches restarts too
        await asyncio.to_thread(cluster.stop_member, follower)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(cluster.start_member, follower)
        await asyncio.sleep(2.0)

    written, _ = asyncio.run(run_snapshotter(store, watched, scenario, writer_url=writer_url))
    full_rev, deltas = assert_chain_holds(store, written)
    outcome.record("fault", "etcd leader stopped (leader change) then the watched member restarted, mid-watch",
                   "snapshotter (3-member cluster)",
                   f"deltas resumed from the right revision; {len(written)} writes, {deltas} deltas, no gap, "
                   "no duplicate")


# -- startup with endpoints down -------------------------------------------------------------------
def _dual_config(primary: StoreConfig, secondary: StoreConfig) -> Config:
    config = Config()
    config.store = primary
    config.secondary = secondary
    config.sync = SyncConfig(enabled=True, period=timedelta(seconds=1))
    return config


def test_secondary_unreachable_at_startup_means_single_endpoint(s3env, gcsenv, caplog, outcome):
    from etcdbr.snapstore import open_stores as build_stores

    caplog.set_level(logging.INFO)
    with FaultProxy.for_url(gcsenv.endpoint) as proxy:
        proxy.refuse()
        primary, secondary = build_stores(_dual_config(s3env.config("start"),
                                                       gcsenv.config("start", endpoint=proxy.url(),
                                                                     env_prefix="SECONDARY_")), opener=fast_open)
    try:
        assert secondary is None
        primary.list()
    finally:
        primary.close()
    lines = [r for r in caplog.records if r.getMessage() == "Only primary snapstore available, using single endpoint"]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    outcome.record("fault", "secondary (GCS) unreachable at startup", "server startup (open_stores)",
                   "WARN: Only primary snapstore available, using single endpoint; primary used alone")


def test_primary_unreachable_at_startup_is_fatal(s3env, gcsenv, tmp_path, outcome):
    from etcdbr.snapstore import open_stores as build_stores
    from reliability.helpers import run_cli

    with FaultProxy.for_url(s3env.endpoint) as proxy:
        proxy.refuse()
        with pytest.raises(StoreUnavailable) as info:
            build_stores(_dual_config(s3env.config("start", endpoint=proxy.url()),
                                      gcsenv.config("start", env_prefix="SECONDARY_")), opener=fast_open)
        assert "S3/" in str(info.value)
        # The server process: a fatal start, one error line, non-zero exit, quickly.
        t0 = time.monotonic()
        result = run_cli(["server", "--server-host=127.0.0.1", f"--server-port={_free()}",
                          "--endpoints=http://127.0.0.1:1", *s3env.cli_args(prefix="start", endpoint=proxy.url()),
                          "--secondary-storage-provider=GCS", f"--secondary-store-container={gcsenv.bucket}",
                          f"--secondary-store-endpoint-override={gcsenv.endpoint}", "--backup-sync-enabled=true"],
                         env={**s3env.env(), "SECONDARY_STORAGE_EMULATOR_HOST": gcsenv.endpoint}, timeout=120)
        seconds = time.monotonic() - t0
    assert result.code != 0, result.output
    assert "Traceback" not in result.output
    assert len(result.error_lines()) == 1 and "S3/" in result.error_lines()[0], result.output
    outcome.record("fault", "primary (S3) unreachable at startup", "`server` (console script)",
                   f"fatal: exit {result.code} in {seconds:.0f}s: {result.error_lines()[0]}")


def _free() -> int:
    from services import free_port

    return free_port()


# -- the secondary is down for several sync periods -------------------------------------------------
def test_secondary_down_for_several_sync_periods_then_back(s3env, gcsenv, outcome):
    from etcdbr.copier import BackupCopier

    primary = s3env.store("sync")
    with FaultProxy.for_url(gcsenv.endpoint) as proxy:
        secondary = gcsenv.store("sync", endpoint=proxy.url())
        sync = SyncConfig(enabled=True, period=timedelta(seconds=0.5), max_retries=1,
                          retry_backoff=timedelta(seconds=0.1), concurrent_copies=4)
        copier = BackupCopier(primary, secondary, sync)

        async def scenario():
            await copier.start()
            first = save_chain(primary, full_last=100, deltas=((101, 110),))
            for s in first:
                copier.notify(s)
            deadline = time.monotonic() + 20
            while names(secondary.list()) != names(first):
                assert time.monotonic() < deadline, "initial copies did not land"
                await asyncio.sleep(0.1)
            proxy.refuse()
            # The primary keeps taking snapshots while the secondary is away for several periods.
            later = []
            for i, (start, last) in enumerate(((111, 120), (121, 130), (131, 140))):
                d = snap(primary, Kind.INCR, start, last, minutes=10 + i)
                await asyncio.to_thread(primary.save, d, io.BytesIO(gz(delta_payload(start, last))))
                copier.notify(d)
                later.append(d)
                await asyncio.sleep(0.6)
            status_down = copier.status()
            runs_failed = proxy.stats.refused + proxy.stats.resets
            proxy.pass_through()
            deadline = time.monotonic() + 30
            while names(secondary.list()) != names(primary.list()):
                assert time.monotonic() < deadline, "the secondary did not catch up"
                await asyncio.sleep(0.2)
            await copier.stop(5)
            return first + later, status_down, runs_failed

        expected, status_down, _ = asyncio.run(scenario())
    assert names(primary.list()) == names(expected)
    direct = gcsenv.store("sync")
    assert names(direct.list()) == names(expected)
    assert verify_store(direct).ok
    assert chain_gaps(*latest_chain(direct.list())) == []
    assert status_down["secondary"]["available"] is False, status_down
    assert status_down["pending"] >= 1, status_down
    outcome.record("fault", "secondary (GCS) refusing connections for ~4 sync periods while the primary takes "
                   "snapshots", "BackupCopier",
                   f"primary unaffected; /sync/status showed the secondary unavailable with "
                   f"{status_down['pending']} pending; caught up once back, listings equal, copies verify clean")
