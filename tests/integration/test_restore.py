"""``restore`` end to end: real snapshots of a real etcd (>= 20,000 operations as one full snapshot
and five deltas in five codecs), restored by the CLI with the real etcdutl and the deltas written
into the restored db (the default) or replayed through a temporary etcd (``--delta-replay=etcd``:
the tests of that engine's pipelining, limits and quota handling), then served by a real etcd and
compared key by key (value, create/mod revision, version) and by current revision with the
source. Local stores where S3 adds nothing, SeaweedFS S3 otherwise. Both engines hashed against
each other: tests/integration/test_direct_replay.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import StoreConfig
from etcdbr.etcd.blocking import EtcdKV, modified_at
from etcdbr.metrics import REGISTRY
from etcdbr.restore import replay as replay_mod
from etcdbr.snapstore import open_store
from services import S3Server, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> sf.ReferenceChain:
    return sf.reference_chain(tmp_path_factory.getbasetemp() / "reference-chain")


def local_store(path: Path, prefix: str = "etcd"):
    return open_store(StoreConfig(provider="Local", container=str(path), prefix=prefix))


def restore_args(ref, data_dir: Path, tmp: Path, *extra: str) -> list[str]:
    return ["restore", f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={tmp / 'restore-tmp'}",
            f"--etcd-bin-dir={ref.bin_dir}", f"--name={data_dir.name[:-5]}",
            f"--initial-cluster={data_dir.name[:-5]}=http://localhost:2380", *extra]


def local_flags(container: Path, prefix: str = "etcd", role: str = "") -> list[str]:
    return [f"--{role}storage-provider=Local", f"--{role}store-container={container}", f"--{role}store-prefix={prefix}"]


def s3_flags(server, bucket: str, role: str = "") -> list[str]:
    return [f"--{role}storage-provider=S3", f"--{role}store-container={bucket}", f"--{role}store-prefix=etcd",
            f"--{role}store-endpoint-override={server.endpoint}"]


def s3_env(tmp: Path, server, role_prefix: str = "") -> dict:
    creds = tmp / f"{role_prefix or 'primary'}-aws.json"
    creds.write_text(json.dumps({"accessKeyID": server.access_key, "secretAccessKey": server.secret_key,
                                 "region": server.region}))
    return {f"{role_prefix}AWS_APPLICATION_CREDENTIALS_JSON": str(creds)}


def s3_store(server, bucket: str, env: dict, role_prefix: str = ""):
    for name, value in env.items():
        os.environ[name] = value  # the store reads its credentials from the environment
    return open_store(StoreConfig(provider="S3", container=bucket, prefix="etcd", endpoint_override=server.endpoint,
                                  env_prefix=role_prefix))


@pytest.fixture(autouse=True)
def _private_env(monkeypatch):
    # stores opened by the tests themselves read credentials from os.environ: undo after each test
    for name in ("AWS_APPLICATION_CREDENTIALS_JSON", "SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON"):
        monkeypatch.setenv(name, "")  # records the original value, restored at teardown
        monkeypatch.delenv(name)


def run(args: list[str], env: dict | None = None):
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    return result


def assert_matches_source(ref, data_dir: Path) -> None:
    server = sf.serve(data_dir, ref.bin_dir)
    try:
        got = sf.dump(server.client_url)
    finally:
        server.cleanup()
    assert got.revision == ref.expected.revision
    assert len(got.kvs) == len(ref.expected.kvs)
    mismatched = [k for k, v in ref.expected.kvs.items() if got.kvs.get(k) != v]
    assert not mismatched, f"{len(mismatched)} keys differ, e.g. {mismatched[:3]}"
    assert got.kvs == ref.expected.kvs


def restorations(succeeded: str) -> float:
    value = REGISTRY.get_sample_value("etcdbr_restoration_duration_seconds_count",
                                      {"restore": "single_node", "succeeded": succeeded})
    return value or 0.0


def test_reference_workload_is_big_enough(ref):
    assert ref.ops >= 20_000
    assert len(ref.deltas) == 5 and ref.expected.revision > ref.full.last_revision + 10_000
    assert {d.compression_suffix for d in ref.deltas} == {".gz", ".zlib", "", ".zst", ".Z"}


@pytest.mark.parametrize("mode", ["direct", "etcd"])
def test_restore_rebuilds_a_deleted_data_dir(ref, tmp_path, mode):
    store = local_store(tmp_path / "bucket")
    sf.copy_snapshots(ref.store(), store)
    data_dir = tmp_path / "member.etcd"
    before = restorations("true")
    # --max-txn-ops below the source's 300-op transaction: it must still land as one revision
    # (the temporary etcd is restarted with a larger limit; the direct replay has no limit).
    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(tmp_path / "bucket"),
                              "--max-txn-ops=128", "--max-fetchers=2", f"--delta-replay={mode}"))
    assert result.exit_code == 0, result.output
    log = result.stderr
    for line in ("fetching", "restoring base snapshot", "applying deltas 1/5", "applying deltas 5/5",
                 f"restore done at revision {ref.expected.revision}"):
        assert line in log
    assert ("lands as one revision" in log) == (mode == "etcd")
    assert ("replaying deltas directly into the restored db" in log) == (mode == "direct")
    assert restorations("true") == before + 1
    assert not (tmp_path / "member.etcd.part").exists() and not (tmp_path / "restore-tmp").exists()
    assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    assert_matches_source(ref, data_dir)


def test_empty_store_does_nothing(ref, tmp_path):
    data_dir = tmp_path / "member.etcd"
    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(tmp_path / "empty-bucket")))
    assert result.exit_code == 0, result.output
    assert "No base snapshot found. Will do nothing." in result.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize("index", [0, 2], ids=["gzip-delta", "raw-delta"])
def test_corrupt_delta_fails_loudly_and_keeps_the_old_data_dir(ref, tmp_path, index):
    bucket = tmp_path / "bucket"
    store = local_store(bucket)
    snaps = sf.copy_snapshots(ref.store(), store)
    victim = [s for s in snaps if s.is_delta][index]
    path = bucket / victim.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))

    data_dir = tmp_path / "member.etcd"
    (data_dir / "member").mkdir(parents=True)
    (data_dir / "member" / "marker").write_text("old data")
    before = (data_dir.stat().st_ino, data_dir.stat().st_mtime_ns, (data_dir / "member").stat().st_mtime_ns)

    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(bucket), "--replace-data-dir=true"))
    assert result.exit_code == 1, result.output
    assert victim.key in result.stderr, result.stderr
    assert re.search(r"checksum mismatch|corrupt|verification", result.stderr)
    assert (data_dir / "member" / "marker").read_text() == "old data"
    assert before == (data_dir.stat().st_ino, data_dir.stat().st_mtime_ns, (data_dir / "member").stat().st_mtime_ns)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket", "member.etcd"]


def test_restore_from_secondary(ref, tmp_path, s3_server, s3_bucket):
    secondary_bucket = s3_server.create_bucket(s3_bucket + "-sec")
    env = {**s3_env(tmp_path, s3_server), **s3_env(tmp_path, s3_server, "SECONDARY_")}
    sf.copy_snapshots(ref.store(), s3_store(s3_server, secondary_bucket, env, "SECONDARY_"))
    # The primary holds only an older, unrelated chain: reading it would give the wrong keyspace.
    sf.copy_snapshots(ref.store(), s3_store(s3_server, s3_bucket, env), [ref.full])

    data_dir = tmp_path / "member.etcd"
    (data_dir / "member").mkdir(parents=True)
    (data_dir / "member" / "stale").write_text("replaced")
    args = restore_args(ref, data_dir, tmp_path, *s3_flags(s3_server, s3_bucket),
                        *s3_flags(s3_server, secondary_bucket, "secondary-"), "--restore-from=secondary",
                        "--replace-data-dir")
    result = run(args, env=env)
    assert result.exit_code == 0, result.output
    assert not (data_dir / "member" / "stale").exists()
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("member.etcd.aside-")]
    assert len(kept) == 1 and (kept[0] / "member" / "stale").read_text() == "replaced", kept
    assert f"old_data_dir_kept_at={kept[0]}" in result.stderr
    assert_matches_source(ref, data_dir)


def test_auto_falls_back_to_secondary_when_primary_is_down(ref, tmp_path, s3_server, s3_bucket):
    primary = S3Server(tmp_path / "primary-s3")
    primary.start()
    try:
        primary_bucket = primary.create_bucket("primary-bucket")
        env = {**s3_env(tmp_path, primary), **s3_env(tmp_path, s3_server, "SECONDARY_")}
        sf.copy_snapshots(ref.store(), s3_store(primary, primary_bucket, env))
        sf.copy_snapshots(ref.store(), s3_store(s3_server, s3_bucket, env, "SECONDARY_"))
        primary_flags = s3_flags(primary, primary_bucket)
        primary.stop()

        data_dir = tmp_path / "member.etcd"
        args = restore_args(ref, data_dir, tmp_path, *primary_flags, *s3_flags(s3_server, s3_bucket, "secondary-"),
                            "--restore-from=auto")
        result = run(args, env=env)
    finally:
        primary.cleanup()
    assert result.exit_code == 0, result.output
    assert re.search(r"WARN: primary store cannot be read; falling back to the secondary store", result.stderr)
    assert "restore source: secondary" in result.stderr
    assert_matches_source(ref, data_dir)


def test_auto_picks_the_store_reaching_the_highest_revision(ref, tmp_path):
    primary, secondary = tmp_path / "primary", tmp_path / "secondary"
    # The primary lost its last two deltas; the secondary has everything.
    sf.copy_snapshots(ref.store(), local_store(primary), [ref.full, *ref.deltas[:3]])
    sf.copy_snapshots(ref.store(), local_store(secondary))
    data_dir = tmp_path / "member.etcd"
    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(primary),
                              *local_flags(secondary, role="secondary-"), "--restore-from=auto"))
    assert result.exit_code == 0, result.output
    assert f"reaches revision {ref.expected.revision}, the primary only {ref.deltas[2].last_revision}" in result.stderr
    assert_matches_source(ref, data_dir)


def test_auto_never_reads_a_failing_store_as_empty(ref, tmp_path):
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"accessKeyID": "some-key", "secretAccessKey": "some-secret", "region": "us-east-1"}))
    env = {"AWS_APPLICATION_CREDENTIALS_JSON": str(creds)}
    flags = ["--storage-provider=S3", "--store-container=gone-bucket",
             f"--store-endpoint-override=http://127.0.0.1:{free_port()}"]
    data_dir = tmp_path / "member.etcd"
    result = run(restore_args(ref, data_dir, tmp_path, *flags, *local_flags(tmp_path / "empty", role="secondary-"),
                              "--restore-from=auto"), env=env)
    assert result.exit_code == 1, result.output
    assert "primary store failed and the secondary has nothing usable" in result.stderr
    assert not data_dir.exists()


def test_long_chain_is_compacted_and_defragmented_on_the_way(ref, tmp_path):
    bucket = tmp_path / "bucket"
    sf.resplit(ref.store(), local_store(bucket), ref.full, ref.deltas, parts=12)
    data_dir = tmp_path / "member.etcd"
    # A 2.75 MiB quota (the db reaches about 2.5 MiB by then): the periodic compaction after 10
    # deltas must also defragment to go on.
    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(bucket), "--max-fetchers=3", "--delta-replay=etcd",
                              "--max-txn-ops=1000", f"--embedded-etcd-quota-bytes={11 * 256 * 1024}"))
    assert result.exit_code == 0, result.output
    assert "applying deltas 12/12" in result.stderr and "defragmenting the temporary etcd" in result.stderr
    assert_matches_source(ref, data_dir)


# -- pipelined replay: a transaction that lands before its predecessor, or whose outcome is lost --

def _pipelined_restore(ref, tmp_path):
    store = local_store(tmp_path / "bucket")
    sf.copy_snapshots(ref.store(), store)
    data_dir = tmp_path / "member.etcd"
    return run(restore_args(ref, data_dir, tmp_path, *local_flags(tmp_path / "bucket"), "--max-txn-ops=1000",
                            "--log-level=debug", "--delta-replay=etcd")), data_dir


def test_replay_resumes_exactly_when_a_guarded_transaction_arrives_out_of_order(ref, tmp_path, monkeypatch):
    # Every 50th guard can never hold, as if its transaction reached etcd before its predecessor:
    # the replay must wait for what is in flight, go on from etcd's revision and stay exact.
    real = replay_mod._guard_after
    failed = []

    def sometimes_impossible(revision, events):
        if revision % 50 == 0:
            failed.append(revision)
            return modified_at(events[0].kv.key, -1)
        return real(revision, events)

    monkeypatch.setattr(replay_mod, "_guard_after", sometimes_impossible)
    result, data_dir = _pipelined_restore(ref, tmp_path)
    assert result.exit_code == 0, result.output
    resumed = result.stderr.count("replay resumes after an out-of-order or failed transaction")
    assert len(failed) > 100 and resumed >= len(failed) // 2, (len(failed), resumed)
    assert_matches_source(ref, data_dir)


def test_replay_resumes_exactly_when_an_applied_transaction_reports_an_error(ref, tmp_path, monkeypatch):
    # The worst case for exactness: etcd applied the transaction but its answer was lost. It must
    # not be applied again: the replay continues from the revision etcd reports.
    real = EtcdKV.txn_future
    calls = {"n": 0, "lost": 0}

    class LostAnswer(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection reset (injected)"

    class Lost:
        def __init__(self, future):
            self.future = future

        def result(self):
            self.future.result()
            raise LostAnswer()

    def lossy(self, ops, compare):
        calls["n"] += 1
        future = real(self, ops, compare)
        if calls["n"] % 37 == 0:
            calls["lost"] += 1
            return Lost(future)
        return future

    monkeypatch.setattr(EtcdKV, "txn_future", lossy)
    result, data_dir = _pipelined_restore(ref, tmp_path)
    assert result.exit_code == 0, result.output
    assert calls["lost"] > 100
    assert result.stderr.count("replay resumes after an out-of-order or failed transaction") >= calls["lost"]
    assert_matches_source(ref, data_dir)


def test_replay_goes_on_pipelining_after_a_restart_for_larger_limits_mid_delta(ref, tmp_path):
    # --max-txn-ops=3 is below the workload's multi-key transactions (up to 7 keys), spread all
    # through the deltas: the temporary etcd is restarted with larger limits in the middle of a
    # delta, and the transactions after it must go to the restarted member.
    store = local_store(tmp_path / "bucket")
    sf.copy_snapshots(ref.store(), store)
    data_dir = tmp_path / "member.etcd"
    result = run(restore_args(ref, data_dir, tmp_path, *local_flags(tmp_path / "bucket"), "--max-txn-ops=3",
                              "--delta-replay=etcd"))
    assert result.exit_code == 0, result.output
    assert result.stderr.count("lands as one revision") >= 2
    assert_matches_source(ref, data_dir)
