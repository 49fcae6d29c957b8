"""Restore logic that needs no etcd: chain selection (--restore-from), the data dir swap, the
validator's structure checks, bbolt meta-page checks and the initializer's status machine.
Stores are real Local stores with synthetic but well-formed snapshots."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from pathlib import Path

import pytest

from etcdbr.compression import compress_bytes, suffix_for
from etcdbr.config import Config, RestorationConfig, StoreConfig
from etcdbr.delta import DeltaEncoder, Event, EventType, KeyValue
from etcdbr.errors import ConfigError, RestoreError
from etcdbr.restore import DataDirStatus, Initializer, InitStatus, choose_store, select_source, validate_data_dir
from etcdbr.restore.bbolt import MAGIC, BoltReader, CorruptDB, fnv64a
from etcdbr.restore.deltas import group_by_revision
from etcdbr.restore.restorer import Chain, Restorer, part_dir, swap_in
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store


# -- synthetic snapshots -------------------------------------------------------------------
def full_payload(size: int = 4096) -> bytes:
    db = os.urandom(size)
    return db + hashlib.sha256(db).digest()


def delta_payload(first: int, last: int) -> bytes:
    enc = DeltaEncoder()
    for rev in range(first, last + 1):
        enc.add(Event(EventType.PUT, KeyValue(key=b"k%d" % rev, value=b"v", create_revision=rev, mod_revision=rev,
                                             version=1), time="2024-01-01T00:00:00Z"))
    return enc.finish()


class Bucket:
    """A Local store under tmp_path with helpers to write chains."""

    def __init__(self, root: Path, name: str) -> None:
        self.config = StoreConfig(provider="Local", container=str(root / name), prefix="etcd")
        self.store = open_store(self.config)

    def full(self, last: int, payload: bytes | None = None, policy="gzip"):
        snap = new_snapshot(Kind.FULL, 0, last, prefix=self.store.prefix, compression_suffix=suffix_for(policy))
        self.store.save(snap, io.BytesIO(compress_bytes(payload or full_payload(), policy)))
        return snap

    def delta(self, first: int, last: int, payload: bytes | None = None, policy="gzip"):
        snap = new_snapshot(Kind.INCR, first, last, prefix=self.store.prefix, compression_suffix=suffix_for(policy))
        self.store.save(snap, io.BytesIO(compress_bytes(payload or delta_payload(first, last), policy)))
        return snap

    def chain(self, full_rev: int, *ranges):
        return self.full(full_rev), [self.delta(a, b) for a, b in ranges]


def config_for(primary: Bucket, secondary: Bucket | None, mode: str) -> Config:
    cfg = Config()
    cfg.store = primary.config
    if secondary is not None:
        cfg.secondary = StoreConfig(provider="Local", container=secondary.config.container, prefix="etcd",
                                    env_prefix="SECONDARY_")
    cfg.restoration.restore_from = mode
    return cfg


@pytest.fixture
def buckets(tmp_path):
    return Bucket(tmp_path, "primary"), Bucket(tmp_path, "secondary")


# -- selection -----------------------------------------------------------------------------
def test_auto_prefers_the_chain_reaching_further(buckets, caplog):
    primary, secondary = buckets
    primary.chain(10, (11, 20))
    secondary.chain(10, (11, 20), (21, 30))
    caplog.set_level(logging.INFO)
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "secondary" and sel.chain.last_revision == 30
    assert "reaches revision 30, the primary only 20" in sel.reason
    assert any("restore source: secondary" in r.getMessage() for r in caplog.records)


def test_auto_prefers_the_primary_on_a_tie(buckets):
    primary, secondary = buckets
    primary.chain(10, (11, 20))
    secondary.chain(10, (11, 20))
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "primary" and "primary is preferred" in sel.reason


def test_auto_never_splices_stores(buckets):
    primary, secondary = buckets
    # The primary has the newer full, the secondary deltas that continue only its own older full.
    primary.full(25)
    secondary.chain(10, (11, 20), (21, 40))
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "secondary"
    assert sel.chain.full.last_revision == 10 and [d.last_revision for d in sel.chain.deltas] == [20, 40]


def test_auto_cuts_a_chain_at_a_gap_and_compares_what_is_left(buckets):
    primary, secondary = buckets
    primary.chain(10, (11, 20), (31, 50))  # 21-30 missing
    secondary.chain(10, (11, 25))
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "secondary" and sel.chain.last_revision == 25

    secondary.store.delete(secondary.store.list()[-1])
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "primary" and sel.truncated and sel.chain.last_revision == 20


def test_auto_verifies_delta_hashes_before_choosing(buckets):
    primary, secondary = buckets
    full, _ = primary.chain(10, (11, 20))
    bad = bytearray(delta_payload(21, 40))
    bad[5] ^= 0xFF
    primary.delta(21, 40, bytes(bad))
    secondary.chain(10, (11, 30))
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "secondary" and sel.chain.last_revision == 30


def test_auto_checks_the_full_snapshot_trailer(buckets):
    primary, secondary = buckets
    broken = bytearray(full_payload())
    broken[100] ^= 0x01
    primary.full(10, bytes(broken))
    primary.delta(11, 50)
    secondary.chain(10, (11, 20))
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.role == "secondary"


def test_auto_uses_the_secondary_when_the_primary_is_empty(buckets):
    primary, secondary = buckets
    secondary.chain(10, (11, 20))
    store, reason = choose_store(config_for(primary, secondary, "auto"))
    assert store.config.container == secondary.config.container
    assert "primary has no usable chain" in reason


def test_auto_with_two_empty_stores_restores_nothing(buckets):
    primary, secondary = buckets
    sel = select_source(config_for(primary, secondary, "auto"))
    assert sel.chain is None and sel.role == "primary"


def test_auto_without_secondary_is_primary(buckets):
    primary, _ = buckets
    sel = select_source(config_for(primary, None, "auto"))
    assert sel.role == "primary"


def test_explicit_modes(buckets):
    primary, secondary = buckets
    assert select_source(config_for(primary, secondary, "primary")).role == "primary"
    sel = select_source(config_for(primary, secondary, "secondary"))
    assert sel.role == "secondary" and sel.store.config.container == secondary.config.container
    with pytest.raises(ConfigError, match="secondary store"):
        select_source(config_for(primary, None, "secondary"))


# -- chains and groups ---------------------------------------------------------------------
def test_a_gap_in_the_chain_names_the_object(buckets, tmp_path):
    primary, _ = buckets
    primary.chain(10, (11, 20), (25, 30))
    restorer = Restorer(primary.store, RestorationConfig(data_dir=str(tmp_path / "d.etcd")))
    chain = restorer.latest()
    with pytest.raises(RestoreError, match=r"revisions 21-24 are missing before object etcd/v2/Incr-00000025"):
        restorer.check_chain(chain)
    assert not (tmp_path / "d.etcd").exists()


def test_events_group_per_revision_in_order():
    evs = [Event(EventType.PUT, KeyValue(key=k, mod_revision=r)) for k, r in
           [(b"a", 5), (b"b", 5), (b"c", 6), (b"d", 7), (b"e", 7), (b"f", 7)]]
    assert [(r, [e.kv.key for e in g]) for r, g in group_by_revision(evs)] == [
        (5, [b"a", b"b"]), (6, [b"c"]), (7, [b"d", b"e", b"f"])]


def test_chain_last_revision(buckets):
    primary, _ = buckets
    full, deltas = primary.chain(10, (11, 20))
    assert Chain(full, deltas).last_revision == 20 and Chain(full).last_revision == 10


# -- swap ----------------------------------------------------------------------------------
def test_swap_puts_the_part_in_place_and_keeps_the_old_data_dir_aside(tmp_path):
    data = tmp_path / "d.etcd"
    (data / "member").mkdir(parents=True)
    (data / "member" / "old").write_text("old")
    part = part_dir(data)
    assert part == tmp_path / "d.etcd.part"
    (part / "member").mkdir(parents=True)
    (part / "member" / "new").write_text("new")
    (tmp_path / "d.etcd.old").mkdir()  # an earlier version's leftover: not ours to remove
    aside = swap_in(part, data, "corrupt")
    assert (data / "member" / "new").read_text() == "new"
    assert aside is not None and aside.parent == tmp_path and aside.name.startswith("d.etcd.aside-")
    assert aside.name.endswith("-corrupt") and (aside / "member" / "old").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["d.etcd", "d.etcd.old", aside.name])


def test_only_the_newest_asides_are_kept_after_a_restore(tmp_path):
    from etcdbr.restore.datadir import KEEP_ASIDE, asides, prune_asides

    data = tmp_path / "d.etcd"
    names = [f"d.etcd.aside-2024010{i}T000000Z-behind" for i in range(1, 5)] + ["d.etcd.replaced-20230101T000000-1"]
    for name in names:
        (tmp_path / name / "member").mkdir(parents=True)
    (tmp_path / "other.etcd.aside-20240101T000000Z-corrupt").mkdir()  # another data dir's
    assert [p.name for p in asides(data)][0] == "d.etcd.replaced-20230101T000000-1"
    removed = prune_asides(data)
    assert len(removed) == len(names) - KEEP_ASIDE == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[-KEEP_ASIDE - 1:-1] + [
        "other.etcd.aside-20240101T000000Z-corrupt"])


def test_swap_into_a_missing_data_dir(tmp_path):
    part = tmp_path / "d.etcd.part"
    part.mkdir()
    swap_in(part, tmp_path / "d.etcd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.etcd"]


# -- validation ----------------------------------------------------------------------------
def _validate(path):
    return validate_data_dir(path, "sanity", name="default", latest_revision=None)


def test_structure_checks(tmp_path):
    assert _validate(tmp_path / "missing").status is DataDirStatus.NOT_EXIST
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _validate(empty).status is DataDirStatus.EMPTY
    junk = tmp_path / "junk"
    (junk / "something").mkdir(parents=True)
    assert _validate(junk).status is DataDirStatus.INVALID_STRUCTURE
    nowal = tmp_path / "nowal"
    (nowal / "member" / "snap").mkdir(parents=True)
    (nowal / "member" / "wal").mkdir()
    (nowal / "member" / "snap" / "db").write_bytes(b"x" * 8192)
    v = _validate(nowal)
    assert v.status is DataDirStatus.INVALID_STRUCTURE and "WAL" in v.reason
    (nowal / "member" / "wal" / "0000000000000000-0000000000000000.wal").write_bytes(b"\0" * 64)
    v = _validate(nowal)
    assert v.status is DataDirStatus.CORRUPT and "meta pages" in v.reason


def _meta_page(page_size: int, txid: int) -> bytes:
    body = struct.pack("<IIIIQQQQQ", MAGIC, 2, page_size, 0, 3, 0, 2, 4, txid)
    page = struct.pack("<QHHI", 0, 0x04, 0, 0) + body + struct.pack("<Q", fnv64a(body))
    return page.ljust(page_size, b"\0")


def test_bbolt_meta_pages(tmp_path):
    db = tmp_path / "db"
    db.write_bytes(_meta_page(4096, 7) + _meta_page(4096, 8) + b"\0" * 8192)
    with BoltReader.open(db) as r:
        assert r.meta.txid == 8 and r.meta.page_size == 4096
    data = bytearray(db.read_bytes())
    data[4096 + 20] ^= 0xFF  # damage the newer meta: bbolt falls back to the other one
    db.write_bytes(bytes(data))
    with BoltReader.open(db) as r:
        assert r.meta.txid == 7
    data[20] ^= 0xFF
    db.write_bytes(bytes(data))
    with pytest.raises(CorruptDB, match="both meta pages"):
        BoltReader.open(db)


# -- initializer ---------------------------------------------------------------------------
def test_initializer_without_store_and_data_dir_does_nothing(tmp_path):
    cfg = Config()
    cfg.restoration.data_dir = str(tmp_path / "d.etcd")
    init = Initializer(cfg)
    assert init.status is InitStatus.NEW
    result = init.run("sanity")
    assert result.action == "nothing" and init.status is InitStatus.SUCCESSFUL
    init.reset()
    assert init.status is InitStatus.NEW


def test_initializer_moves_an_unusable_data_dir_aside_when_no_store_is_configured(tmp_path):
    cfg = Config()
    data = tmp_path / "d.etcd"
    (data / "garbage").mkdir(parents=True)
    (data / "garbage" / "file").write_text("kept")
    cfg.restoration.data_dir = str(data)
    result = Initializer(cfg).run("full")
    assert result.action == "moved-aside" and result.validation.status is DataDirStatus.INVALID_STRUCTURE
    assert not data.exists()
    assert result.aside and (Path(result.aside) / "garbage" / "file").read_text() == "kept"
    assert Path(result.aside).name.startswith("d.etcd.aside-") and Path(result.aside).name.endswith("-invalid")


def test_initializer_reports_failure(tmp_path):
    cfg = Config()
    cfg.restoration.data_dir = str(tmp_path / "d.etcd")
    init = Initializer(cfg)
    with pytest.raises(ConfigError):
        init.run("thorough")
    assert init.status is InitStatus.FAILED and isinstance(init.error, ConfigError)
