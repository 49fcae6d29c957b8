"""The secondary is complete after every stop, and an outage of it is loud (issue 14).

Real services throughout: ``server`` processes against a real etcd (one member, or a three-member
cluster whose leadership moves), the SeaweedFS S3 server as primary, the GCS emulator or a Local
directory as secondary.

* SIGTERM under a write load: the last delta period of writes exists only in the ``.final``
  delta uploaded during shutdown; the copier must copy it before the process exits, so that a
  restore from the secondary alone equals the live etcd.
* The same when the sidecar loses leadership (``etcdctl move-leader``) instead of stopping.
* An outage of the secondary: a WARN naming it and ``/sync/status`` flipped at the first failed
  copy, an INFO with the downtime and the catch-up once it is back.
* An upload SIGKILLed mid-way leaves a staging file in a Local store; ``verify`` reports it and
  the next start sweeps it once it is old enough.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_helpers import (
    EtcdWriter,
    ServerProcess,
    keyspace,
    restore_with_cli,
    s3_env,
    s3_primary_gcs_secondary,
    s3_store_args,
)

import snapshot_factory as sf
from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store
from etcdbr.snapstore.local import STAGING_DIR, STALE_STAGING
from faultproxy import FaultProxy
from services.etcd import run_etcdctl

pytestmark = pytest.mark.integration

COMMAND = str(Path(sys.executable).parent / "etcd-backup-restore")
MiB = 1024 * 1024
# Deltas only at shutdown (or the loss of leadership), periodic sync runs never: whatever the
# secondary holds of the last writes, the copier's drain put there.
QUIET = ["--schedule=0 0 1 1 *", "--delta-snapshot-period=10m", "--backup-sync-period=1h",
         "--garbage-collection-period=0s", "--backup-sync-retry-backoff=1s"]


def _keys(snaps) -> set[str]:
    return {s.copier_key() for s in snaps if not s.is_chunk}


def _log_records(server: ServerProcess) -> list[dict]:
    return [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]


def _messages(server: ServerProcess) -> list[str]:
    return [r.get("msg", "") for r in _log_records(server)]


def _final_delta(snaps):
    finals = [s for s in snaps if s.kind is Kind.INCR and s.is_final]
    assert len(finals) == 1, [s.snap_name for s in snaps]
    return finals[0]


# -- SIGTERM under writes -------------------------------------------------------------------------
def test_sigterm_copies_the_final_delta_and_the_secondary_restores_the_live_keyspace(
        tmp_path, etcd_factory, s3_server, s3_bucket, gcs_server, gcs_bucket, monkeypatch):
    etcd = etcd_factory()
    env, primary, secondary = s3_primary_gcs_secondary(tmp_path, s3_server, s3_bucket, gcs_server, gcs_bucket,
                                                       "stop", monkeypatch)
    server = ServerProcess(tmp_path, [
        "--endpoints", etcd.client_url, *s3_store_args(s3_server, s3_bucket, "stop"),
        "--secondary-storage-provider=GCS", f"--secondary-store-container={gcs_bucket}",
        "--secondary-store-prefix=stop", "--backup-sync-enabled=true", "--log-format=json", *QUIET,
    ], env=env).start()
    writer = EtcdWriter(etcd.client_url, "stop/", rate=40)
    try:
        server.wait_healthy()
        server.wait_for(lambda: _keys(secondary.list()) == _keys(primary.list()) != set(), 30,
                        "the startup full snapshot on the secondary")
        writer.start()
        time.sleep(4)
        writer.stop()
        assert len(writer.writes) > 50 and not writer.errors
        live = sf.dump(etcd.client_url)
        assert server.terminate(timeout=60) == 0
    finally:
        writer.stop()
        server.stop()

    final = _final_delta(primary.list())
    assert final.last_revision == live.revision == writer.writes[-1][2]
    # The secondary lists the final delta (copied without the suffix, as the Go copier names it).
    assert final.copier_key() in _keys(secondary.list())
    assert _keys(secondary.list()) == _keys(primary.list())
    messages = _messages(server)
    assert "backup copier stopped; the secondary holds every snapshot it was given" in messages
    assert not any(m.startswith("snapshot left behind") for m in messages)

    # The secondary alone restores exactly what the live etcd holds.
    restored = keyspace(restore_with_cli(tmp_path, "fromsecondary", [
        "--secondary-storage-provider=GCS", f"--secondary-store-container={gcs_bucket}",
        "--secondary-store-prefix=stop", "--restore-from=secondary"], env))
    assert restored.revision == live.revision
    assert restored.kvs == live.kvs


# -- loss of leadership in a three-member cluster ---------------------------------------------------
def test_losing_leadership_copies_the_final_delta_to_the_secondary(tmp_path, etcd_cluster_factory, s3_server,
                                                                  s3_bucket, monkeypatch):
    cluster = etcd_cluster_factory(3)
    env = s3_env(s3_server, tmp_path)
    for name, value in env.items():   # the test's own handle on the primary reads them too
        monkeypatch.setenv(name, value)
    secondary_dir = tmp_path / "secondary"
    secondary_flags = ["--secondary-storage-provider=Local", f"--secondary-store-container={secondary_dir}",
                       "--secondary-store-prefix=ha"]
    primary = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="ha",
                                     endpoint_override=s3_server.endpoint))
    secondary = open_store(StoreConfig(provider="Local", container=str(secondary_dir), prefix="ha"))
    servers: list[ServerProcess] = []
    writer = None
    try:
        for i, member in enumerate(cluster.members):
            servers.append(ServerProcess(tmp_path, [
                "--endpoints", member.client_url, *s3_store_args(s3_server, s3_bucket, "ha"), *secondary_flags,
                "--backup-sync-enabled", "--reelection-period=1.1s", "--log-format=json", *QUIET,
            ], env, name=f"sidecar{i}").start())
        old = cluster.leader_index()
        for server in servers:
            server.wait_healthy(90)
        servers[old].wait_for(lambda: _keys(secondary.list()) == _keys(primary.list()) != set(), 30,
                              "the leader's startup full snapshot on the secondary")

        writer = EtcdWriter(cluster.members[old].client_url, "ha/", rate=40)
        writer.start()
        time.sleep(4)
        writer.stop()
        assert len(writer.writes) > 50 and not writer.errors

        new = (old + 1) % 3
        run_etcdctl(cluster.bin_dir / "etcdctl", cluster.client_urls, "move-leader",
                    format(cluster.members[new].member_id(), "x"))
        assert cluster.leader_index() == new
        servers[old].wait_for(lambda: "backup-restore stopped leading" in _messages(servers[old]), 30,
                              "the old leader's sidecar to stop leading")
        servers[old].wait_for(lambda: any(m.startswith("backup copier stopped") for m in _messages(servers[old])),
                              60, "the old leader's copier to stop")
        live = sf.dump(cluster.members[new].client_url)
    finally:
        if writer is not None:
            writer.stop()
        for server in servers:
            if server.proc is not None and server.proc.poll() is None:
                server.terminate(timeout=60)
            server.stop()

    old_log = _messages(servers[old])
    # The old leader uploaded the events it had buffered as its final delta and copied it to the
    # secondary itself before its term ended (not left to whichever sidecar leads next).
    uploads = [r for r in _log_records(servers[old]) if r.get("msg") == "uploaded the events buffered at shutdown"]
    assert len(uploads) == 1, old_log
    final_name = uploads[0]["snapshot"]
    assert final_name.endswith(".final")
    stopped = old_log.index("backup copier stopped; the secondary holds every snapshot it was given")
    assert stopped > old_log.index("backup-restore stopped leading")
    assert not any(m.startswith("snapshot left behind") for m in old_log)
    final = next(s for s in primary.list() if s.snap_name == final_name)
    assert final.copier_key() in _keys(secondary.list())
    assert final.last_revision >= writer.writes[-1][2]

    restored = keyspace(restore_with_cli(tmp_path, "fromsecondary", [*secondary_flags, "--restore-from=secondary"],
                                         env))
    # The live cluster may have moved on only by what the new leader took since (nothing: no
    # writes after the move), so the secondary restores it exactly.
    assert restored.kvs == live.kvs
    assert restored.revision == live.revision


# -- an outage of the secondary --------------------------------------------------------------------
def test_secondary_outage_is_loud_at_once_and_its_recovery_says_how_long(tmp_path, etcd_factory, s3_server,
                                                                        s3_bucket):
    etcd = etcd_factory()
    env = s3_env(s3_server, tmp_path)
    secondary_dir = tmp_path / "secondary"
    aside = tmp_path / "secondary-unmounted"
    server = ServerProcess(tmp_path, [
        "--endpoints", etcd.client_url, *s3_store_args(s3_server, s3_bucket, "outage"),
        "--secondary-storage-provider=Local", f"--secondary-store-container={secondary_dir}",
        "--secondary-store-prefix=outage", "--backup-sync-enabled=true", "--log-format=json",
        "--schedule=0 0 1 1 *", "--delta-snapshot-period=1s", "--backup-sync-period=1h",
        "--garbage-collection-period=0s", "--backup-sync-retry-backoff=3s", "--backup-sync-max-retries=2",
    ], env=env).start()
    try:
        server.wait_healthy()
        server.wait_for(lambda: server.get_json("/sync/status")["secondary"]["available"] is True, 30,
                        "the initial sync")
        # The secondary's volume goes away and a file takes its place (the chaos run's fault).
        secondary_dir.rename(aside)
        secondary_dir.write_text("not a directory")
        t0 = time.monotonic()
        etcd.etcdctl("put", "/outage/a", "1")   # a delta within a second, its copy fails at once
        server.wait_for(lambda: server.get_json("/sync/status")["secondary"]["available"] is False, 10,
                        "/sync/status to report the secondary down")
        flipped = time.monotonic() - t0
        records = _log_records(server)
        warns = [r for r in records if r.get("msg") == "Secondary snapstore unavailable"]
        assert len(warns) == 1 and warns[0]["level"] == "warn", records[-5:]
        assert warns[0]["endpoint"] == f"Local:{secondary_dir}" and "is not a directory" in warns[0]["reason"]
        # Within the first copy attempt: the copy's retries (3 s, then 6 s) have not run out yet.
        assert not any(r.get("msg", "").startswith("Failed to copy snapshot") for r in records)
        assert flipped < 5
        metrics = server.get("/metrics")[2].decode()
        assert 'etcdbr_snapstore_available{endpoint="secondary"} 0.0' in metrics

        time.sleep(2)
        etcd.etcdctl("put", "/outage/b", "2")   # another delta while it is down
        time.sleep(2)
        secondary_dir.unlink()
        aside.rename(secondary_dir)
        back = time.monotonic()
        server.wait_for(lambda: any(m.startswith("Secondary snapstore available again after ")
                                    for m in _messages(server)), 30, "the recovery line")
        recovered = time.monotonic() - back
        status = server.get_json("/sync/status")
        assert status["secondary"]["available"] is True and status["pending"] == 0
        assert status["secondary"]["snapshots"] == status["primary"]["snapshots"]
        assert server.terminate(timeout=60) == 0
    finally:
        server.stop()
    line = next(r for r in _log_records(server) if r.get("msg", "").startswith("Secondary snapstore available again"))
    assert line["level"] == "info" and line["copies_caught_up"] >= 2 and line["down_seconds"] >= 3
    assert recovered < 3 + 5   # found by the probe run, every --backup-sync-retry-backoff while down


# -- an upload killed mid-way ------------------------------------------------------------------------
def test_sigkilled_upload_leaves_staging_that_verify_reports_and_the_next_start_sweeps(
        tmp_path, etcd_factory, s3_server, s3_bucket, monkeypatch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SOURCE_AWS_"))}
    creds = s3_env(s3_server, tmp_path, prefix="SOURCE_")
    env.update(creds)
    for name, value in creds.items():
        monkeypatch.setenv(name, value)
    source = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="src",
                                    endpoint_override=s3_server.endpoint, env_prefix="SOURCE_"))
    big = new_snapshot(Kind.FULL, 0, 1000, prefix=source.prefix, compression_suffix=".gz")
    source.save(big, io.BytesIO(os.urandom(20 * MiB)))
    container = tmp_path / "local"
    local_flags = ["--storage-provider=Local", f"--store-container={container}", "--store-prefix=dst"]
    # The copy reads the source through a proxy that slows it to ~1 MiB/s: it is mid-upload
    # into the Local store's staging area when it is killed.
    proxy = FaultProxy.for_url(s3_server.endpoint).start()
    proxy.latency(0.05)
    staging = container / STAGING_DIR
    copy = subprocess.Popen([COMMAND, "copy", "--source-storage-provider=S3", f"--source-store-container={s3_bucket}",
                             "--source-store-prefix=src", f"--source-store-endpoint-override={proxy.url()}",
                             *local_flags], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (staging.is_dir() and any(p.stat().st_size > MiB for p in staging.iterdir())):
            assert copy.poll() is None and time.monotonic() < deadline, copy.stderr.read() if copy.poll() else "slow"
            time.sleep(0.1)
        copy.send_signal(signal.SIGKILL)
        copy.wait(timeout=10)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
        copy.stderr.close()
        proxy.stop()
    (leftover,) = list(staging.iterdir())
    assert leftover.name.startswith("upload-")

    def verify() -> dict:
        result = subprocess.run([COMMAND, "verify", *local_flags, "--output=json"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr   # no snapshot is affected: no defect
        return json.loads(result.stdout)

    (reported,) = verify()["uploadLeftovers"]
    assert reported["key"] == f"{STAGING_DIR}/{leftover.name}" and reported["abandoned"] is False
    assert leftover.exists()   # verify never removes anything

    # A start soon after the kill keeps it (the writer could still be alive on another host);
    # once it was not written for the safe age, the next start removes it.
    etcd = etcd_factory()
    server_flags = ["--endpoints", etcd.client_url, *local_flags, "--schedule=0 0 1 1 *",
                    "--delta-snapshot-period=0s", "--garbage-collection-period=0s", "--log-format=json"]

    def start_and_stop(name: str) -> ServerProcess:
        server = ServerProcess(tmp_path, server_flags, env, name=name).start()
        try:
            server.wait_healthy()
            assert server.terminate() == 0
        finally:
            server.stop()
        return server

    first = start_and_stop("first-start")
    assert leftover.exists()
    assert any(m == "staging files of uploads that may still be running were kept" for m in _messages(first))

    then = time.time() - STALE_STAGING.total_seconds() - 60
    os.utime(leftover, (then, then))   # the passage of the safe age, without waiting an hour
    (reported,) = verify()["uploadLeftovers"]
    assert reported["abandoned"] is True
    second = start_and_stop("second-start")
    assert not leftover.exists()
    swept = [r for r in _log_records(second)
             if r.get("msg") == "removed a staging file an interrupted upload left behind"]
    assert len(swept) == 1 and swept[0]["file"] == f"{STAGING_DIR}/{leftover.name}"
    assert verify()["uploadLeftovers"] == []
