"""The Local store: layout under $HOME, atomic writes, v1 clean-up and its error mapping."""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pytest

from etcdbr.config import StoreConfig
from etcdbr.errors import ObjectNotFound, StoreError, StoreUnavailable
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store
from etcdbr.snapstore.local import STAGING_DIR, LocalStore

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def make(container="backups", prefix="etcd") -> LocalStore:
    store = open_store(StoreConfig(provider="Local", container=container, prefix=prefix))
    assert isinstance(store, LocalStore)
    return store


def snap(store, kind=Kind.FULL, start=0, last=10, minutes=0, **kw):
    return new_snapshot(kind, start, last, prefix=store.prefix, created_on=T0.replace(minute=minutes), **kw)


class SourceDied(RuntimeError):
    pass


class Dying(io.RawIOBase):
    def __init__(self, good: bytes) -> None:
        self.good = good
        self.done = False

    def readable(self):
        return True

    def read(self, n=-1):
        if self.done:
            raise SourceDied("source died")
        self.done = True
        return self.good


def test_layout_is_home_container_prefix_v2(home):
    store = make()
    s = snap(store, compression_suffix=".gz")
    assert store.save(s, io.BytesIO(b"data")) == 4
    path = home / "backups" / "etcd" / "v2" / "Full-00000000-00000010-1714564800.gz"
    assert path.read_bytes() == b"data"
    assert store.display == "Local/backups"
    assert store.prefix == "etcd/v2"


def test_empty_provider_and_container_default_to_local_default_bkp(home):
    store = open_store(StoreConfig())
    assert isinstance(store, LocalStore)
    store.save(snap(store), io.BytesIO(b"x"))
    assert (home / "default.bkp" / "v2").is_dir()


def test_absolute_container_is_used_as_is(home, tmp_path):
    target = tmp_path / "elsewhere"
    store = make(container=str(target), prefix="")
    store.save(snap(store), io.BytesIO(b"x"))
    assert (target / "v2" / snap(store).snap_name).is_file()
    assert not any(home.iterdir())


def test_round_trip_sorted_with_sizes(home):
    store = make()
    incr = snap(store, Kind.INCR, 11, 20, minutes=1)
    full = snap(store)
    store.save(incr, io.BytesIO(b"incr"))
    store.save(full, io.BytesIO(b"full!"))
    listed = store.list()
    assert [s.key for s in listed] == [full.key, incr.key]
    assert [s.size for s in listed] == [5, 4]
    with store.fetch(listed[1]) as f:
        assert f.read() == b"incr"
    store.delete(listed[0])
    assert [s.key for s in store.list()] == [incr.key]


def test_failed_save_leaves_no_file_and_no_staging_leftover(home):
    store = make()
    s = snap(store)
    with pytest.raises(SourceDied):
        store.save(s, Dying(b"partial"))
    assert store.list() == []
    assert not (home / "backups" / s.key).exists()
    assert list((home / "backups" / STAGING_DIR).iterdir()) == []


def test_failed_overwrite_keeps_the_previous_object(home):
    store = make()
    s = snap(store)
    store.save(s, io.BytesIO(b"complete"))
    with pytest.raises(SourceDied):
        store.save(s, Dying(b"part"))
    with store.fetch(s) as f:
        assert f.read() == b"complete"


def test_staging_files_are_never_listed(home):
    store = make(prefix="")
    staging = home / "backups" / STAGING_DIR
    staging.mkdir(parents=True)
    (staging / "v2").mkdir()
    (staging / "v2" / "Full-00000000-00000001-1700000000").write_bytes(b"half")
    assert store.list() == []


def test_missing_object_is_object_not_found(home):
    store = make()
    ghost = snap(store)
    with pytest.raises(ObjectNotFound) as exc:
        store.fetch(ghost)
    assert ghost.key in str(exc.value) and "Local/backups" in str(exc.value)
    with pytest.raises(ObjectNotFound):
        store.delete(ghost)


def test_deleting_the_last_v1_object_removes_its_directory(home):
    store = make()
    v1_dir = home / "backups" / "etcd" / "v1" / "Backup-1600000000"
    v1_dir.mkdir(parents=True)
    (v1_dir / "Full-00000000-00000100-1600000000").write_bytes(b"a")
    (v1_dir / "Incr-00000101-00000120-1600000060").write_bytes(b"b")
    listed = store.list()
    assert [(s.snap_dir, s.prefix) for s in listed] == [("Backup-1600000000", "etcd/v1")] * 2
    store.delete(listed[0])
    assert v1_dir.is_dir()
    store.delete(listed[1])
    assert not v1_dir.exists()
    assert (home / "backups" / "etcd").is_dir()


def test_chunk_objects_are_listed_as_chunks(home):
    store = make()
    base = home / "backups" / "etcd" / "v2" / "Full-00000000-00000050-1700000000"
    base.mkdir(parents=True)
    (base / "0000000001").write_bytes(b"c1")
    (base / "0000000002").write_bytes(b"c2")
    listed = store.list()
    assert sorted(s.chunk_name for s in listed) == ["0000000001", "0000000002"]
    assert all(s.is_chunk and s.kind is Kind.CHUNK for s in listed)


def test_container_that_is_a_file_is_a_store_error(home):
    (home / "notadir").write_text("x")
    store = make(container="notadir")
    with pytest.raises(StoreError) as exc:
        store.check()
    assert "Local/notadir" in str(exc.value)
    with pytest.raises(StoreError):
        store.save(snap(store), io.BytesIO(b"x"))


def test_copy_from_is_never_server_side(home):
    a, b = make(prefix="a"), make(prefix="b")
    s = snap(a)
    a.save(s, io.BytesIO(b"x"))
    assert b.copy_from(a, s, s.with_prefix(b.prefix)) is False
    assert b.list() == []


# -- a vanished store is not an empty store -------------------------------------------------------
def test_a_container_that_disappears_is_an_outage_not_an_empty_store(home):
    import shutil

    from etcdbr.errors import StoreUnavailable

    store = make()
    store.check()
    s = snap(store)
    store.save(s, io.BytesIO(b"full"))
    assert [x.snap_name for x in store.list()] == [s.snap_name]
    shutil.rmtree(store.root)
    with pytest.raises(StoreUnavailable, match="has disappeared"):
        store.list()
    # Neither a read nor a save takes the vanished container for empty or recreates it (it may
    # be a mount point that went away: writing there would "succeed" onto the wrong disk).
    with pytest.raises(StoreUnavailable):
        store.fetch(s)
    with pytest.raises(StoreUnavailable):
        store.delete(s)
    with pytest.raises(StoreUnavailable):
        store.save(snap(store, kind=Kind.INCR, start=11, last=20, minutes=1), io.BytesIO(b"delta"))
    assert not store.root.exists()


def test_a_container_replaced_by_a_file_and_a_vanished_tree_are_outages(home):
    import shutil

    from etcdbr.errors import StoreUnavailable

    store = make()
    store.check()
    store.save(snap(store), io.BytesIO(b"full"))
    shutil.rmtree(store.root / "etcd")            # the store's tree goes, the container stays
    with pytest.raises(StoreUnavailable, match="etcd/v2 has disappeared"):
        store.list()
    shutil.rmtree(store.root)
    store.root.write_text("not a directory")      # what the chaos run did to a secondary
    with pytest.raises(StoreUnavailable, match="is not a directory"):
        store.list()


def test_a_container_never_created_lists_empty_and_is_created_by_the_first_save(home):
    store = make("fresh")
    assert store.list() == []
    s = snap(store)
    store.save(s, io.BytesIO(b"full"))
    assert [x.snap_name for x in store.list()] == [s.snap_name]


# -- staging leftovers of interrupted uploads -----------------------------------------------------
def _leftover(store: LocalStore, name: str, age_seconds: float, data: bytes = b"partial") -> Path:
    import os
    import time

    staging = store.root / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    path = staging / name
    path.write_bytes(data)
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_check_sweeps_only_old_unlocked_staging_files(home, caplog):
    import fcntl
    import logging
    import os

    from etcdbr.snapstore.local import STALE_STAGING

    store = make()
    store.check()
    old = STALE_STAGING.total_seconds() + 60
    abandoned = _leftover(store, "upload-abandoned", old)
    recent = _leftover(store, "upload-recent", 30)
    live = _leftover(store, "upload-live", old)
    foreign = _leftover(store, "notes.txt", old)       # not ours: never touched
    # A live writer holds the lock on its staging file (here another open file description).
    fd = os.open(live, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        leftovers = {x.key: x for x in store.staging_leftovers()}
        assert set(leftovers) == {f"{STAGING_DIR}/upload-abandoned", f"{STAGING_DIR}/upload-recent",
                                  f"{STAGING_DIR}/upload-live"}
        assert leftovers[f"{STAGING_DIR}/upload-abandoned"].abandoned
        assert leftovers[f"{STAGING_DIR}/upload-abandoned"].size == len(b"partial")
        assert not leftovers[f"{STAGING_DIR}/upload-recent"].abandoned
        assert not leftovers[f"{STAGING_DIR}/upload-live"].abandoned

        store.check(sweep=False)          # read-only commands leave everything
        assert abandoned.exists()
        with caplog.at_level(logging.INFO, logger="etcdbr.snapstore.local"):
            store.check()
        assert not abandoned.exists()
        assert recent.exists() and live.exists() and foreign.exists()
        assert any(r.getMessage() == "removed a staging file an interrupted upload left behind"
                   and r.file == f"{STAGING_DIR}/upload-abandoned" for r in caplog.records)
    finally:
        os.close(fd)


def test_a_save_holds_the_lock_of_its_staging_file_until_it_is_in_place(home):
    from etcdbr.snapstore.local import _locked

    store = make()
    store.check()
    seen = []

    class Watching(io.RawIOBase):
        def __init__(self):
            self.left = 3

        def readable(self):
            return True

        def readinto(self, buf):
            (staging,) = list((store.root / STAGING_DIR).iterdir())
            seen.append(_locked(staging))
            if not self.left:
                return 0
            self.left -= 1
            buf[:4] = b"data"
            return 4

    store.save(snap(store), Watching())
    assert seen and all(seen)
    assert list((store.root / STAGING_DIR).iterdir()) == []


def test_verify_lists_staging_leftovers_without_calling_them_defects(home):
    from etcdbr.snapstore.local import STALE_STAGING
    from etcdbr.verify import verify_store

    store = make()
    store.check()
    _leftover(store, "upload-old", STALE_STAGING.total_seconds() + 60, b"x" * 10)
    _leftover(store, "upload-new", 5)
    report = verify_store(store, check_content=False)
    assert report.ok and report.defects == []
    assert [(x.key, x.abandoned) for x in report.leftovers] == [
        (f"{STAGING_DIR}/upload-new", False), (f"{STAGING_DIR}/upload-old", True)]
    text = report.render()
    assert "2 leftover(s) of interrupted uploads (no defect):" in text
    assert f"{STAGING_DIR}/upload-old: 10 bytes, last written" in text
    assert "abandoned: the next start of server, snapshot or copy removes it" in text
    assert "recent or locked: may belong to an upload still running" in text
    assert report.to_json()["uploadLeftovers"][1]["abandoned"] is True


def test_a_read_only_check_creates_nothing(home):
    store = open_store(StoreConfig())
    with pytest.raises(StoreUnavailable) as exc:
        store.check(sweep=False)
    assert "does not exist" in str(exc.value) and "Local/default.bkp" in str(exc.value)
    assert not (home / "default.bkp").exists()
    (home / "default.bkp").mkdir()
    store.check(sweep=False)
    assert store.list() == [] and not (home / "default.bkp" / "v2").exists()


def test_an_absolute_container_reads_as_one_path(tmp_path):
    store = open_store(StoreConfig(container=str(tmp_path / "b")))
    assert store.display == f"Local:{tmp_path / 'b'}" and "//" not in store.display


# -- an absolute container: ours is the path itself, the Go tool's is $HOME joined in front ------
def _seed(root: Path, prefix: str = "etcd") -> None:
    store = LocalStore(StoreConfig(provider="Local", container=str(root), prefix=prefix))
    store.save(snap(store, compression_suffix=".gz"), io.BytesIO(b"data"))


def test_absolute_container_is_used_as_is_when_the_go_location_is_empty(home, tmp_path, caplog):
    ours = tmp_path / "abs" / "backups"
    _seed(ours)
    caplog.set_level("WARNING")
    store = make(container=str(ours))
    assert store.root == ours and len(store.list()) == 1
    assert not [r for r in caplog.records if "Go etcdbrctl" in r.getMessage()]


def test_absolute_container_falls_back_to_where_the_go_tool_wrote(home, tmp_path, caplog):
    ours = tmp_path / "abs" / "backups"
    go = Path(f"{home}{ours}")       # path.Join(home, container) in the Go tool
    _seed(go)
    caplog.set_level("WARNING")
    store = make(container=str(ours))
    assert store.root == go and len(store.list()) == 1
    [warning] = [r.getMessage() for r in caplog.records if "Go etcdbrctl" in r.getMessage()]
    assert f"{ours} holds no snapshots but {go} does" in warning and f"using {go}" in warning


def test_absolute_container_with_stores_in_both_places_uses_the_path_and_warns(home, tmp_path, caplog):
    ours = tmp_path / "abs" / "backups"
    go = Path(f"{home}{ours}")
    _seed(ours)
    _seed(go)
    caplog.set_level("WARNING")
    store = make(container=str(ours))
    assert store.root == ours
    [warning] = [r.getMessage() for r in caplog.records if "Go etcdbrctl" in r.getMessage()]
    assert f"{ours} holds snapshots and so does {go}" in warning and f"using {ours}" in warning


def test_go_location_of_another_prefix_does_not_count(home, tmp_path):
    ours = tmp_path / "abs" / "backups"
    _seed(Path(f"{home}{ours}"), prefix="other-cluster")
    assert make(container=str(ours)).root == ours


def test_home_at_root_makes_both_readings_one_directory(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HOME", "/")
    ours = tmp_path / "abs"
    _seed(ours)
    caplog.set_level("WARNING")
    assert make(container=str(ours)).root == ours
    assert not [r for r in caplog.records if "Go etcdbrctl" in r.getMessage()]
