"""``initialize`` against real snapshots, the real etcdutl and real etcd members: a missing, corrupt
or stale data dir is restored (the old one kept aside); a healthy one is not touched (same inode,
same mtimes, same bytes); one of another member, or one a running etcd holds, is refused without
being touched. tests/integration/test_data_dir_safety.py has the first rule's scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.config import Config, StoreConfig
from etcdbr.metrics import REGISTRY
from etcdbr.restore import DataDirStatus, Initializer, InitStatus
from etcdbr.restore.bbolt import read_etcd_db
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> sf.ReferenceChain:
    return sf.reference_chain(tmp_path_factory.getbasetemp() / "reference-chain")


@pytest.fixture
def bucket(ref, tmp_path) -> Path:
    sf.copy_snapshots(ref.store(), open_store(StoreConfig(provider="Local", container=str(tmp_path / "bucket"),
                                                          prefix="etcd")))
    return tmp_path / "bucket"


def args(ref, bucket: Path, data_dir: Path, *extra: str, name: str = "member") -> list[str]:
    return ["initialize", "--storage-provider=Local", f"--store-container={bucket}", "--store-prefix=etcd",
            f"--data-dir={data_dir}", f"--restoration-temp-snapshots-dir={data_dir.parent / 'restore-tmp'}",
            f"--etcd-bin-dir={ref.bin_dir}", f"--name={name}", f"--initial-cluster={name}=http://localhost:2380",
            *extra]


def run(argv):
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def fingerprint(data_dir: Path) -> dict:
    out = {}
    for path in sorted([data_dir, *data_dir.rglob("*")]):
        st = path.stat()
        out[str(path.relative_to(data_dir))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_missing_data_dir_is_restored_and_a_healthy_one_left_alone(ref, bucket, tmp_path):
    data_dir = tmp_path / "member.etcd"
    result = run(args(ref, bucket, data_dir))
    assert result.exit_code == 0, result.output
    assert "data dir is not usable" in result.stderr and "status=NotExist" in result.stderr
    assert f"restore done at revision {ref.expected.revision}" in result.stderr
    before = fingerprint(data_dir)
    validations = REGISTRY.get_sample_value("etcdbr_validation_duration_seconds_count", {"succeeded": "true"})

    for mode in ("full", "sanity"):
        result = run(args(ref, bucket, data_dir, f"--validation-mode={mode}"))
        assert result.exit_code == 0, result.output
        assert "data dir is valid; leaving it untouched" in result.stderr
        assert fingerprint(data_dir) == before
    after = REGISTRY.get_sample_value("etcdbr_validation_duration_seconds_count", {"succeeded": "true"})
    assert after == validations + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bucket", "member.etcd"]

    server = sf.serve(data_dir, ref.bin_dir)
    try:
        got = sf.dump(server.client_url)
    finally:
        server.cleanup()
    assert got.revision == ref.expected.revision and got.kvs == ref.expected.kvs


def _full_only_store(ref, tmp_path) -> Path:
    sf.copy_snapshots(ref.store(), open_store(StoreConfig(provider="Local", container=str(tmp_path / "full-only"),
                                                          prefix="etcd")), [ref.full])
    return tmp_path / "full-only"


def test_corrupt_db_is_restored(ref, tmp_path):
    bucket = _full_only_store(ref, tmp_path)
    data_dir = tmp_path / "member.etcd"
    assert run(args(ref, bucket, data_dir)).exit_code == 0
    db = data_dir / "member" / "snap" / "db"
    with open(db, "r+b") as fh:  # both meta pages gone: bbolt cannot open the file
        fh.write(b"\0" * 8192)
    result = run(args(ref, bucket, data_dir, "--validation-mode=sanity"))
    assert result.exit_code == 0, result.output
    assert "status=Corrupt" in result.stderr and "meta pages" in result.stderr
    assert read_etcd_db(db).revision == ref.full.last_revision


def test_data_dir_of_another_member_is_refused_untouched(ref, tmp_path):
    bucket = _full_only_store(ref, tmp_path)
    data_dir = tmp_path / "member.etcd"
    assert run(args(ref, bucket, data_dir, name="alpha")).exit_code == 0
    before = fingerprint(data_dir)
    result = run(args(ref, bucket, data_dir, name="beta"))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: data dir {data_dir} belongs to member 'alpha' (peer URLs http://localhost:2380), but this member's "
        "name is 'beta' (from --name) and its peer URLs are http://localhost:2380: set --name (or the name in etcd's "
        "config file, ETCD_CONF) or --initial-advertise-peer-urls to the member's, or mount this member's own volume; "
        "nothing was restored, moved or removed")
    assert fingerprint(data_dir) == before
    assert [m["name"] for m in read_etcd_db(data_dir / "member" / "snap" / "db").members] == ["alpha"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full-only", "member.etcd"]


def test_data_dir_behind_the_latest_snapshot_is_restored(ref, bucket, tmp_path):
    data_dir = tmp_path / "member.etcd"
    assert run(args(ref, _full_only_store(ref, tmp_path), data_dir)).exit_code == 0
    result = run(args(ref, bucket, data_dir, "--validation-mode=sanity"))
    assert result.exit_code == 0, result.output
    assert "letting etcd replay its WAL" in result.stderr and "status=RevisionBehind" in result.stderr
    assert read_etcd_db(data_dir / "member" / "snap" / "db").revision == ref.expected.revision


def test_data_dir_held_by_a_running_etcd_is_refused_untouched(ref, tmp_path):
    bucket = _full_only_store(ref, tmp_path)
    data_dir = tmp_path / "member.etcd"
    assert run(args(ref, bucket, data_dir)).exit_code == 0
    server = sf.serve(data_dir, ref.bin_dir)
    try:
        cfg = Config()
        cfg.store = StoreConfig(provider="Local", container=str(bucket), prefix="etcd")
        cfg.restoration.data_dir = str(data_dir)
        cfg.restoration.name = "member"
        cfg.restoration.etcd_bin_dir = str(ref.bin_dir)
        init = Initializer(cfg)
        with pytest.raises(Exception, match="another process holds the file lock"):
            init.run("full")
        assert init.status is InitStatus.FAILED
        assert server.is_running() and os.path.isdir(data_dir / "member")
    finally:
        server.cleanup()


def test_initializer_api_statuses(ref, tmp_path):
    bucket = _full_only_store(ref, tmp_path)
    cfg = Config()
    cfg.store = StoreConfig(provider="Local", container=str(bucket), prefix="etcd")
    cfg.restoration.data_dir = str(tmp_path / "member.etcd")
    cfg.restoration.name = "member"
    cfg.restoration.initial_cluster = "member=http://localhost:2380"
    cfg.restoration.temp_snapshots_dir = str(tmp_path / "restore-tmp")
    cfg.restoration.etcd_bin_dir = str(ref.bin_dir)
    init = Initializer(cfg)
    assert init.status is InitStatus.NEW and init.start() and init.status is InitStatus.PROGRESS
    result = init.run("full")
    assert init.status is InitStatus.SUCCESSFUL and not init.start()
    assert result.action == "restored" and result.revision == ref.full.last_revision
    assert result.validation.status is DataDirStatus.NOT_EXIST
    init.reset()
    assert init.run("full").action == "kept"
