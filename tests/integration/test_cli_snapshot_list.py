"""``snapshot list`` against a real S3 server (SeaweedFS), run as the installed command."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from etcdbr.config import StoreConfig
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store
from services import free_port, unique_name

pytestmark = pytest.mark.integration

COMMAND = str(Path(sys.executable).parent / "etcd-backup-restore")
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def s3_env(s3_server, tmp_path):
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_", "STORE_"))}
    env.update(AWS_APPLICATION_CREDENTIALS_JSON=str(creds), HOME=str(tmp_path))
    return env


def run(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([COMMAND, "snapshot", "list", *args], env=env, capture_output=True, text=True, timeout=120)


def flags(bucket: str, endpoint: str, *extra: str) -> list[str]:
    return ["--storage-provider=S3", f"--store-container={bucket}", "--store-prefix=etcd/main",
            f"--store-endpoint-override={endpoint}", *extra]


def test_snapshot_list_table_and_json(s3_server, s3_bucket, s3_env, monkeypatch):
    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    store = open_store(StoreConfig(provider="S3", container=s3_bucket, prefix="etcd/main",
                                   endpoint_override=s3_server.endpoint))
    full = new_snapshot(Kind.FULL, 0, 1200, prefix=store.prefix, compression_suffix=".gz", created_on=T0)
    incr = new_snapshot(Kind.INCR, 1201, 1300, prefix=store.prefix, compression_suffix=".gz",
                        created_on=T0.replace(minute=1))
    store.save(full, io.BytesIO(b"f" * 2048))
    store.save(incr, io.BytesIO(b"i" * 10))
    store.close()

    table = run(s3_env, *flags(s3_bucket, s3_server.endpoint))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"S3/{s3_bucket} prefix etcd/main/v2: 2 snapshot(s)"
    assert lines[1].split()[:3] == ["KIND", "START", "LAST"]
    assert lines[2].split()[:3] == ["Full", "0", "1200"] and "2.0 KiB" in lines[2]
    assert lines[3].split()[:3] == ["Incr", "1201", "1300"] and "10 B" in lines[3]
    assert "Traceback" not in table.stderr

    out = run(s3_env, *flags(s3_bucket, s3_server.endpoint, "--output", "json"))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["store"] == f"S3/{s3_bucket}" and doc["prefix"] == "etcd/main/v2"
    assert [(s["kind"], s["key"], s["size"]) for s in doc["snapshots"]] == [
        ("Full", full.key, 2048), ("Incr", incr.key, 10)]
    assert doc["snapshots"][0]["snapName"] == full.snap_name
    assert doc["snapshots"][0]["createdOn"] == "2024-05-01T12:00:00Z"


def test_snapshot_list_unreachable_endpoint_is_one_line(s3_env):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run(s3_env, *flags("some-bucket", dead))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and dead in lines[0] and "S3/some-bucket" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_snapshot_list_missing_bucket_and_wrong_secret(s3_server, s3_env, tmp_path):
    missing = unique_name("missing")
    result = run(s3_env, *flags(missing, s3_server.endpoint))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: S3/{missing}: bucket {missing!r} does not exist at {s3_server.endpoint}"

    bucket = s3_server.create_bucket(unique_name("s3"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": "wrong-secret-value"}))
    result = run(dict(s3_env, AWS_APPLICATION_CREDENTIALS_JSON=str(bad)), *flags(bucket, s3_server.endpoint))
    assert result.returncode == 2  # a credential problem, as the README lists it
    assert len(result.stderr.strip().splitlines()) == 1 and "credentials refused" in result.stderr
    assert "wrong-secret-value" not in result.stderr


# -- an endpoint that accepts connections and never answers ---------------------------------------
class SilentListener:
    """A TCP listener owned by the test: accepts every connection, reads nothing, answers nothing
    (a hung load balancer or a wedged server). No real store can be made to do this on purpose."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent():
    listener = SilentListener()
    yield listener
    listener.close()


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_snapshot_list_against_a_silent_endpoint_fails_within_the_default_bound(s3_env, silent):
    # The documented bound: 60 s by default (3x --store-timeout), retries included. The first
    # request times out after 20 s, the SDK tries it once more, and nothing else is retried.
    t = time.monotonic()
    result = run(s3_env, *flags("some-bucket", silent.endpoint))
    took = time.monotonic() - t
    line = _one_error_line(result)
    assert result.returncode == 1
    assert took <= 60, f"took {took:.1f}s"
    assert took >= 20, f"took {took:.1f}s: the timeout was not the one documented"
    assert "S3/some-bucket" in line and silent.endpoint in line and "did not answer within 20s" in line, line
    assert len(silent.accepted) == 2   # one request, tried twice by the SDK


@pytest.mark.parametrize("provider", ["GCS", "ABS"])
def test_snapshot_list_store_timeout_flag_bounds_every_provider(provider, s3_env, silent, tmp_path):
    env = dict(s3_env)
    if provider == "ABS":
        creds = tmp_path / "azure.json"
        creds.write_text(json.dumps({"storageAccount": "devstoreaccount1", "storageKey": "a2V5" * 11}))
        env["AZURE_APPLICATION_CREDENTIALS_JSON"] = str(creds)
        endpoint = silent.endpoint + "/devstoreaccount1"
    else:
        env["STORAGE_EMULATOR_HOST"] = silent.endpoint
        endpoint = silent.endpoint
    t = time.monotonic()
    result = subprocess.run([COMMAND, "snapshot", "list", f"--storage-provider={provider}", "--store-container=c",
                             f"--store-endpoint-override={endpoint}", "--store-timeout=2s"],
                            env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - t
    line = _one_error_line(result)
    assert result.returncode == 1
    assert took <= 3 * 2 + 3, f"took {took:.1f}s"   # the bound, plus the interpreter's start
    assert f"{provider}/c" in line and "did not answer within 2s (--store-timeout)" in line, line
