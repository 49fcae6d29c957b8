"""``server`` as a subprocess against a real etcd and a real S3 server (SeaweedFS).

What is checked end to end: snapshots under a steady write load (a startup full, deltas whose
revisions chain without gaps and whose decoded events are exactly the writes), the HTTP API
(health, on-demand full and delta, latest, config, metrics, sync status, initialization),
secrets absent from every API answer and every log line, HTTPS with the Go tool's security
headers, garbage collection by the server, and SIGTERM ending the process with exit code 0
after the buffered events were uploaded.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import ssl
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from server_helpers import (
    EtcdWriter,
    ServerProcess,
    deltas,
    fulls,
    read_delta,
    s3_env,
    s3_objects,
    s3_store_args,
)

pytestmark = pytest.mark.integration

# Go metric names dashboards use (compatibility.md §6) that this tool serves.
GO_METRICS = [
    "etcdbr_snapshot_gc_total", "etcdbr_snapshot_latest_revision", "etcdbr_snapshot_latest_timestamp",
    "etcdbr_snapshot_required", "etcdbr_snapshot_duration_seconds", "etcdbr_validation_duration_seconds",
    "etcdbr_restoration_duration_seconds", "etcdbr_defragmentation_duration_seconds",
    "etcdbr_snapstore_latest_deltas_total", "etcdbr_snapstore_latest_deltas_revisions_total",
    "etcdbr_snapshotter_failure", "etcdbr_cluster_size",
]
NO_SCHEDULED_FULL = "0 0 1 1 *"  # once a year: only startup and on-demand fulls happen






def test_server_backs_up_under_load_and_serves_the_api(tmp_path, etcd_factory, s3_server, s3_bucket, servers):
    password = f"etcd-pw-{uuid.uuid4().hex}"
    etcd = etcd_factory()
    etcd.etcdctl("user", "add", f"root:{password}")
    etcd.etcdctl("auth", "enable")
    env = {**s3_env(s3_server, tmp_path), "ETCD_PASSWORD": password}
    server = servers.start(tmp_path, [
        "--endpoints", etcd.client_url, "--etcd-username", "root",
        *s3_store_args(s3_server, s3_bucket, "cluster/srv"),
        "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "1s", "--reelection-period", "1.1s",
        "--log-level", "debug",
    ], env)
    t0 = time.monotonic()
    server.wait_healthy(60)
    startup_seconds = time.monotonic() - t0
    status, headers, body = server.get("/healthz")
    assert (status, body) == (200, b'{"health":true}')
    assert headers["Content-Type"].startswith("application/json")
    assert "Strict-Transport-Security" not in headers  # only with TLS

    writer = EtcdWriter(etcd.client_url, "/load/", rate=40, user="root", password=password)
    writer.start()
    answers: list[bytes] = []
    try:
        time.sleep(2)
        # on-demand snapshots while the load runs
        status, _, body = server.get("/snapshot/full")
        answers.append(body)
        assert status == 200, body
        on_demand = json.loads(body)
        assert on_demand["kind"] == "Full" and on_demand["startRevision"] == 0 and not on_demand["isFinal"]
        assert on_demand["prefix"] == "cluster/srv/v2"
        assert on_demand["immutabilityExpriyTime"] == "0001-01-01T00:00:00Z"
        time.sleep(2)
        status, _, body = server.get("/snapshot/delta")
        answers.append(body)
        assert status == 200
        delta = json.loads(body)
        assert delta is None or (delta["kind"] == "Incr" and delta["startRevision"] > on_demand["lastRevision"])
        latest = server.get_json("/snapshot/latest")
        answers.append(json.dumps(latest).encode())
        time.sleep(1)
    finally:
        writer.stop()
    assert not writer.errors, writer.errors[:3]
    assert set(latest) == {"fullSnapshot", "deltaSnapshots"}
    assert latest["fullSnapshot"]["snapName"] == on_demand["snapName"]
    assert [d["startRevision"] for d in latest["deltaSnapshots"]][:1] == [on_demand["lastRevision"] + 1]

    assert server.get("/snapshot/full?final=maybe")[0] == 400
    status, _, metrics_text = server.get("/metrics")
    assert status == 200
    answers.append(metrics_text)
    metric_lines = metrics_text.decode()
    for name in GO_METRICS:
        # prometheus_client exposes a counter's samples as <name>_total (Go's counter here has no suffix)
        assert f"# TYPE {name} " in metric_lines or f"# TYPE {name}_total counter" in metric_lines, name
    assert f'etcdbr_snapshot_latest_revision{{kind="Full"}} {float(on_demand["lastRevision"])}' in metric_lines

    for path in ("/effective-config", "/effective-config?format=json", "/sync/status", "/initialization/status",
                 "/snapshot/latest"):
        status, _, body = server.get(path)
        assert status == 200, (path, body)
        answers.append(body)
    config_yaml = yaml.safe_load(server.get("/effective-config")[2])
    config_json = json.loads(server.get("/effective-config?format=json")[2])
    assert config_yaml == config_json
    assert config_yaml["etcd-password"] == "******" and config_yaml["etcd-username"] == "root"
    assert config_yaml["storage-provider"] == "S3" and config_yaml["endpoints"] == [etcd.client_url]
    assert config_yaml["delta-snapshot-period"] == "1s"
    assert json.loads(server.get("/sync/status")[2]) == {"enabled": False}
    assert server.get("/snapshot/sync")[0] == 405
    assert server.get("/initialization/status")[2] == b"New"

    # Writes after the last periodic delta: SIGTERM must upload them before exiting.
    last_writes = [writer.put_one() for _ in range(3)]
    t1 = time.monotonic()
    assert server.terminate(timeout=30) == 0
    stop_seconds = time.monotonic() - t1

    snaps = [s for s in s3_objects(s3_server, s3_bucket, "cluster/srv") if not s.is_chunk]
    full_snaps = fulls(snaps)
    assert len(full_snaps) == 2, [s.snap_name for s in snaps]
    assert full_snaps[1].snap_name == on_demand["snapName"]
    assert len(deltas(snaps)) >= 4
    writes = {rev: (key, value) for key, value, rev in writer.writes}
    events = {}
    prev = None
    for snap in snaps:
        if snap.kind.value == "Incr":
            # every delta starts right after the snapshot before it
            assert prev is not None and snap.start_revision == prev.last_revision + 1, (prev, snap)
            evs = read_delta(s3_server, s3_bucket, snap)
            revs = [e.kv.mod_revision for e in evs]
            assert revs == sorted(set(revs)) and revs[0] >= snap.start_revision and revs[-1] == snap.last_revision
            events.update({e.kv.mod_revision: e for e in evs})
        prev = snap
    # every event is one of our writes, byte for byte
    for rev, event in events.items():
        assert rev in writes, rev
        assert (event.kv.key, event.kv.value, event.type.name) == (*writes[rev], "PUT")
    # every write after the startup full is in a delta, or inside a full taken after the delta before it
    boundaries = [(a.last_revision, b.last_revision) for a, b in itertools.pairwise(snaps) if b.kind.value == "Full"]
    for rev in writes:
        if rev <= full_snaps[0].last_revision:
            continue
        assert rev in events or any(lo < rev <= hi for lo, hi in boundaries), rev
    assert all(rev in events for _, _, rev in last_writes)  # the shutdown flush
    assert len(events) >= 0.8 * len([r for r in writes if r > full_snaps[1].last_revision])

    # no secret in any answer or log line
    log_text = server.log_text()
    assert "full snapshot uploaded" in log_text and "delta snapshot uploaded" in log_text
    for secret in (password, s3_server.secret_key):
        assert secret not in log_text
        for body in answers:
            assert secret.encode() not in body
    print(f"startup to healthy {startup_seconds:.1f}s, SIGTERM to exit {stop_seconds:.1f}s, "
          f"{len(writer.writes)} writes, {len(deltas(snaps))} deltas")


def _self_signed(tmp_path):
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "etcdbr-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_https_without_provider_and_initialization(tmp_path, etcd_server, servers):
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    server = servers.start(tmp_path, [
        "--endpoints", etcd_server.client_url, "--server-cert", str(cert), "--server-key", str(key),
        "--reelection-period", "1.1s", "--data-dir", str(tmp_path / "member.etcd"),
        "--use-etcd-wrapper", "--full-snapshot-lease-name", "x",  # the Go tool's flags, accepted and ignored
    ], tls_context=context)
    server.wait_healthy(60)  # no provider: healthy once etcd answers
    status, headers, body = server.get("/healthz")
    assert (status, body) == (200, b'{"health":true}')
    assert headers["Strict-Transport-Security"] == "max-age=31536000"
    assert headers["Content-Security-Policy"] == "default-src 'self'"
    assert server.get("/no-such-path")[1]["Strict-Transport-Security"] == "max-age=31536000"
    for path in ("/snapshot/full", "/snapshot/delta", "/snapshot/latest"):
        assert server.get(path)[0] == 405, path
    assert json.loads(server.get("/sync/status")[2]) == {"enabled": False}
    # plain HTTP is not served on the TLS port
    plain = ServerProcess(tmp_path, [])
    plain.port = server.port
    with pytest.raises(OSError):
        plain.get("/healthz", timeout=5)

    # initialization: New -> Progress/Successful, reported once, then New again
    assert server.get("/initialization/status")[2] == b"New"
    status, _, body = server.get("/initialization/start?mode=sanity")
    assert (status, body) == (200, b"")
    seen = []

    def terminal():
        seen.append(server.get("/initialization/status")[2].decode())
        return seen[-1] in ("Successful", "Failed")

    server.wait_for(terminal, 60, "initialization to finish")
    assert seen[-1] == "Successful", server.tail()
    assert set(seen) <= {"Progress", "Successful"}
    assert server.get("/initialization/status")[2] == b"New"
    assert server.get("/initialization/start")[0] == 200  # a second run is allowed after the report
    server.wait_for(terminal, 60, "second initialization")
    server.wait_healthy(30)
    assert "accepted for compatibility with the Go tool and ignored" in server.log_text()
    assert server.terminate(timeout=30) == 0


def test_missing_tls_files_are_a_config_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", "from etcdbr.cli.main import main; main()", "server", "--server-host", "127.0.0.1",
         "--server-cert", str(tmp_path / "nope.crt"), "--server-key", str(tmp_path / "nope.key")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "--server-cert" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_garbage_collects_limit_based(tmp_path, etcd_server, s3_server, s3_bucket, servers):
    server = servers.start(tmp_path, [
        "--endpoints", etcd_server.client_url, *s3_store_args(s3_server, s3_bucket, "gc"),
        "--schedule", NO_SCHEDULED_FULL, "--delta-snapshot-period", "1s", "--reelection-period", "1.1s",
        "--garbage-collection-policy", "LimitBased", "--max-backups", "2", "--garbage-collection-period", "2s",
    ], s3_env(s3_server, tmp_path))
    server.wait_healthy(60)
    prefix = f"/gc-{uuid.uuid4().hex[:8]}/"
    taken = []
    for i in range(4):
        etcd_server.etcdctl("put", f"{prefix}a{i}", "x")
        server.wait_for(lambda: server.get_json("/snapshot/latest")["deltaSnapshots"], 20, "a delta")
        # a revision newer than the delta, so the full never ties with it in the listing order
        etcd_server.etcdctl("put", f"{prefix}b{i}", "x")
        taken.append(server.get_json("/snapshot/full")["snapName"])
    etcd_server.etcdctl("put", f"{prefix}last", "x")
    server.wait_for(lambda: server.get_json("/snapshot/latest")["deltaSnapshots"], 20, "a delta after the last full")

    def collected():
        snaps = s3_objects(s3_server, s3_bucket, "gc")
        return [s.snap_name for s in fulls(snaps)] == taken[-2:] and len(deltas(snaps)) >= 1

    server.wait_for(collected, 30, "GC to keep only the 2 newest fulls")
    snaps = s3_objects(s3_server, s3_bucket, "gc")
    newest = fulls(snaps)[-1]
    # only the latest stream keeps deltas (retention period 0)
    assert all(d.start_revision > newest.last_revision for d in deltas(snaps)), (
        [s.snap_name for s in snaps], server.tail(60))
    status, _, body = server.get("/metrics")
    assert 'etcdbr_snapshot_gc_total{kind="Full",succeeded="true"}' in body.decode()
    assert server.terminate(timeout=30) == 0
