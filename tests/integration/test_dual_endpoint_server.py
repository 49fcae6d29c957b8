"""The dual-endpoint feature end to end: a running ``server`` with a live etcd under a write load,
the real S3 server as primary and the GCS emulator as secondary.

Checked: the secondary's listing becomes equal to the primary's (by the copier key), the
document's log lines appear, a snapshot deleted from the primary disappears from the secondary on
the next run, ``/sync/status`` reports both endpoints equal, and a restore from the secondary alone
gives the same keyspace and revision as a restore from the primary.
"""

from __future__ import annotations

import json
import time

import pytest
from server_helpers import (
    EtcdWriter,
    ServerProcess,
    keyspace,
    restore_with_cli,
    s3_primary_gcs_secondary,
    s3_store_args,
)

pytestmark = pytest.mark.integration


def _keys(snaps) -> set[str]:
    return {s.copier_key() for s in snaps if not s.is_chunk}


def test_server_keeps_a_gcs_secondary_equal_to_an_s3_primary(tmp_path, etcd_factory, s3_server, s3_bucket,
                                                            gcs_server, gcs_bucket, monkeypatch):
    etcd = etcd_factory()
    env, primary, secondary = s3_primary_gcs_secondary(tmp_path, s3_server, s3_bucket, gcs_server, gcs_bucket,
                                                       "dual", monkeypatch)
    server = ServerProcess(tmp_path, [
        "--endpoints", etcd.client_url, *s3_store_args(s3_server, s3_bucket, "dual"),
        "--secondary-storage-provider=GCS", f"--secondary-store-container={gcs_bucket}",
        "--secondary-store-prefix=dual",
        "--backup-sync-enabled=true", "--backup-sync-period=2s", "--backup-sync-retry-backoff=1s",
        "--delta-snapshot-period=1s", "--schedule=0 0 1 1 *", "--garbage-collection-period=0s",
    ], env=env).start()
    writer = EtcdWriter(etcd.client_url, "dual/", rate=30)
    try:
        server.wait_healthy()
        writer.start()

        def in_sync(min_deltas: int) -> bool:
            p, s = primary.list(), secondary.list()
            return sum(x.is_delta for x in p) >= min_deltas and _keys(p) == _keys(s)

        server.wait_for(lambda: in_sync(4), 60, "the secondary to hold every primary snapshot")
        log = server.log_text()
        assert f"Creating snapstore with backup copier - Primary: S3/{s3_bucket}, Secondary: GCS/{gcs_bucket}" in log
        assert "Starting backup copier..." in log
        assert "Found " in log and " snapshots to copy and " in log

        # A snapshot the primary loses (its GC, an operator) leaves the secondary on the next run.
        # A new full first, so that the lost delta belongs to an older chain, as GC would pick it.
        status, _, body = server.get("/snapshot/full")
        assert status == 200, body
        full_revision = json.loads(body)["lastRevision"]
        victim = next(s for s in primary.list() if s.is_delta and s.last_revision <= full_revision)
        primary.delete(victim)
        server.wait_for(lambda: victim.copier_key() not in _keys(secondary.list()), 30,
                        "the deleted snapshot to disappear from the secondary")

        writer.stop()
        time.sleep(1.5)  # the last delta is taken and copied at once
        server.wait_for(lambda: in_sync(4), 30, "both endpoints to be equal after the writes stopped")
        status = json.loads(server.get("/sync/status")[2])
        assert status["primary"]["available"] and status["secondary"]["available"], status
        assert server.terminate() == 0
    finally:
        writer.stop()
        server.stop()

    # Every copy holds the primary's bytes, so a restore from the secondary alone gives the same
    # keyspace and revision as one from the primary.
    assert _keys(primary.list()) == _keys(secondary.list())
    from_secondary = restore_with_cli(tmp_path, "fromsecondary", [
        "--secondary-storage-provider=GCS", f"--secondary-store-container={gcs_bucket}",
        "--secondary-store-prefix=dual", "--restore-from=secondary"], env)
    from_primary = restore_with_cli(tmp_path, "fromprimary", s3_store_args(s3_server, s3_bucket, "dual"), env)
    a, b = keyspace(from_primary), keyspace(from_secondary)
    assert a.revision == b.revision and a.kvs == b.kvs
