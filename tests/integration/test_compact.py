"""``compact``: the latest chain (full + 5 deltas of a >= 20,000-operation workload) folded into
one new full snapshot whose restore equals the chain's restore (same keys, values, revisions)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from click.testing import CliRunner

import snapshot_factory as sf
from etcdbr.cli.main import cli
from etcdbr.compression import decompress_bytes
from etcdbr.config import StoreConfig
from etcdbr.snapshot import latest_chain
from etcdbr.snapstore import open_store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> sf.ReferenceChain:
    return sf.reference_chain(tmp_path_factory.getbasetemp() / "reference-chain")


def store_at(path: Path):
    return open_store(StoreConfig(provider="Local", container=str(path), prefix="etcd"))


def common(ref, bucket: Path, tmp: Path, data_dir: Path | None = None) -> list[str]:
    data_dir = data_dir or tmp / "unused.etcd"
    return ["--storage-provider=Local", f"--store-container={bucket}", "--store-prefix=etcd",
            f"--restoration-temp-snapshots-dir={tmp / 'restore-tmp'}", f"--etcd-bin-dir={ref.bin_dir}",
            f"--data-dir={data_dir}", f"--name={data_dir.name[:-5]}",
            f"--initial-cluster={data_dir.name[:-5]}=http://localhost:2380"]


def run(argv):
    return CliRunner().invoke(cli, argv, catch_exceptions=False)


def served_dump(ref, data_dir: Path) -> sf.Dump:
    server = sf.serve(data_dir, ref.bin_dir)
    try:
        return sf.dump(server.client_url)
    finally:
        server.cleanup()


def test_compacted_full_restores_like_the_chain(ref, tmp_path):
    bucket = tmp_path / "bucket"
    store = store_at(bucket)
    sf.copy_snapshots(ref.store(), store)

    chain_dir = tmp_path / "chain.etcd"
    assert run(["restore", *common(ref, bucket, tmp_path, chain_dir)]).exit_code == 0

    result = run(["compact", *common(ref, bucket, tmp_path), "--compression-policy=zstd"])
    assert result.exit_code == 0, result.output
    listed = store.list()
    assert len(listed) == 1 + 1 + len(ref.deltas)  # nothing removed, one full added
    full, deltas = latest_chain(listed)
    assert deltas == [] and full.start_revision == 0 and full.last_revision == ref.expected.revision
    assert full.snap_name.startswith(f"Full-00000000-{ref.expected.revision:08d}-") and full.snap_name.endswith(".zst")
    assert result.stdout.strip() == full.key
    raw = store.fetch(full)
    payload = decompress_bytes(raw.read(), full.compression_suffix)
    raw.close()
    assert len(payload) % 512 == 32 and hashlib.sha256(payload[:-32]).digest() == payload[-32:]
    assert not (tmp_path / "restore-tmp").exists()

    compact_dir = tmp_path / "compact.etcd"
    result = run(["restore", *common(ref, bucket, tmp_path, compact_dir)])
    assert result.exit_code == 0, result.output
    assert "applying deltas" not in result.stderr  # one full snapshot, no chain to replay

    from_chain, from_compacted = served_dump(ref, chain_dir), served_dump(ref, compact_dir)
    assert from_compacted.revision == from_chain.revision == ref.expected.revision
    assert from_compacted.kvs == from_chain.kvs == ref.expected.kvs


def test_compact_uncompressed_and_without_defragmentation(ref, tmp_path):
    bucket = tmp_path / "bucket"
    store = store_at(bucket)
    sf.copy_snapshots(ref.store(), store, [ref.full, ref.deltas[0]])
    result = run(["compact", *common(ref, bucket, tmp_path), "--compress-snapshots=false", "--defragment=false"])
    assert result.exit_code == 0, result.output
    full, deltas = latest_chain(store.list())
    assert full.compression_suffix == "" and full.last_revision == ref.deltas[0].last_revision and not deltas
    assert "defragmenting" not in result.stderr


def test_compact_of_an_empty_store_does_nothing(ref, tmp_path):
    result = run(["compact", *common(ref, tmp_path / "empty", tmp_path)])
    assert result.exit_code == 0, result.output
    assert "No base snapshot found. Will do nothing." in result.stderr
    assert store_at(tmp_path / "empty").list() == []
