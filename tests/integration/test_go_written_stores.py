"""Stores the Go ``etcdbrctl`` really wrote (``tests/data/go-etcdbrctl``, see its README): this tool
lists, verifies and restores each one, and copies each to the S3 server and the GCS emulator and
restores it from there. Every restore is served by a real etcd and must give exactly the keyspace
and revision of the fixture's ``expected.json``, recorded from the Go tool's source etcd."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli

pytestmark = pytest.mark.integration

DATA = Path(__file__).resolve().parents[1] / "data" / "go-etcdbrctl"
STORES = ("none", "gzip", "zlib", "lzw", "handover-gzip")


def expected(name: str) -> dict:
    return json.loads((DATA / name / "expected.json").read_text())


@pytest.fixture
def go_store(request, tmp_path) -> tuple[Path, dict]:
    """A private copy of one Go-written store (the repository's copy is never written to)."""
    name = request.param
    dst = tmp_path / f"go-{name}"
    shutil.copytree(DATA / name / "store", dst)
    return dst, expected(name)


def run(args: list[str], env: dict | None = None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def local_flags(store: Path, exp: dict, role: str = "") -> list[str]:
    return [f"--{role}storage-provider=Local", f"--{role}store-container={store}",
            f"--{role}store-prefix={exp['store_prefix']}"]


def restore_and_compare(tmp_path: Path, exp: dict, store_flags: list[str], env: dict | None = None) -> None:
    bin_dir = sf.etcd_bin_dir()
    data_dir = tmp_path / "member.etcd"
    result = run(["restore", f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp_path / 'rtmp'}",
                  f"--etcd-bin-dir={bin_dir}", "--name=member", "--initial-cluster=member=http://localhost:2380",
                  *store_flags], env=env)
    assert result.exit_code == 0, result.stderr
    assert f"restore done at revision {exp['revision']}" in result.stderr
    server = sf.serve(data_dir, bin_dir)
    try:
        got = sf.dump(server.client_url)
    finally:
        server.cleanup()
    want = {base64.b64decode(k): base64.b64decode(v) for k, v in exp["keys"].items()}
    assert got.revision == exp["revision"]
    assert {k: v[0] for k, v in got.kvs.items()} == want


@pytest.mark.parametrize("go_store", STORES, indirect=True)
def test_list_and_verify_go_written_store(go_store):
    store, exp = go_store
    listed = run(["snapshot", "list", *local_flags(store, exp), "--output=json"])
    assert listed.exit_code == 0, listed.stderr
    doc = json.loads(listed.stdout)
    assert sorted(s["key"] for s in doc["snapshots"]) == sorted(exp["objects"])
    for s in doc["snapshots"]:
        name = s["key"].rsplit("/", 1)[1]
        kind, start, last = name.split("-")[:3]
        assert (s["kind"], s["startRevision"], s["lastRevision"]) == (kind, int(start), int(last))

    verified = run(["verify", *local_flags(store, exp), "--output=json"])
    assert verified.exit_code == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["defects"] == []
    assert report["contentChecked"] is True
    assert sorted(o["key"] for o in report["objects"]) == sorted(exp["objects"])
    assert {o["status"] for o in report["objects"]} == {"ok"}
    assert max(c["last_revision"] for c in report["chains"]) == exp["revision"]
    assert all(c["contiguous"] for c in report["chains"])


@pytest.mark.parametrize("go_store", STORES, indirect=True)
def test_restore_go_written_store_from_local(go_store, tmp_path):
    store, exp = go_store
    restore_and_compare(tmp_path, exp, local_flags(store, exp))


def _s3_env(tmp_path: Path, s3_server) -> dict:
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                 "region": s3_server.region, "s3ForcePathStyle": True}))
    return {"AWS_APPLICATION_CREDENTIALS_JSON": str(creds)}


@pytest.mark.parametrize("go_store", STORES, indirect=True)
def test_copy_go_written_store_to_s3_and_restore(go_store, tmp_path, s3_server, s3_bucket):
    store, exp = go_store
    env = _s3_env(tmp_path, s3_server)
    remote = ["--storage-provider=S3", f"--store-container={s3_bucket}", f"--store-prefix={exp['store_prefix']}",
              f"--store-endpoint-override={s3_server.endpoint}"]
    copied = run(["copy", *local_flags(store, exp, "source-"), *remote], env=env)
    assert copied.exit_code == 0, copied.stderr
    listing = s3_server.client().list_objects_v2(Bucket=s3_bucket)
    assert sorted(o["Key"] for o in listing.get("Contents", [])) == sorted(exp["objects"])
    restore_and_compare(tmp_path, exp, remote, env)


@pytest.mark.parametrize("go_store", STORES, indirect=True)
def test_copy_go_written_store_to_gcs_and_restore(go_store, tmp_path, gcs_server, gcs_bucket):
    store, exp = go_store
    env = gcs_server.env()
    remote = ["--storage-provider=GCS", f"--store-container={gcs_bucket}", f"--store-prefix={exp['store_prefix']}"]
    copied = run(["copy", *local_flags(store, exp, "source-"), *remote], env=env)
    assert copied.exit_code == 0, copied.stderr
    names = sorted(b.name for b in gcs_server.client().list_blobs(gcs_bucket))
    assert names == sorted(exp["objects"])
    restore_and_compare(tmp_path, exp, remote, env)

