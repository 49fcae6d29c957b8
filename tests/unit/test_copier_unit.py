"""BackupCopier with two Local stores: planning, .final matching, the deletion guard, retries,
verification failures, the event-driven path, shutdown, dry-run and the document's log lines."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import json
import logging
import re
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from etcdbr import metrics
from etcdbr.config import Config, StoreConfig, SyncConfig
from etcdbr.copier import (
    BackupCopier,
    destination_for,
    own_snapshots,
    plan_sync,
    select_backups,
)
from etcdbr.errors import ConfigError, ImmutableObject, StoreError, StoreUnavailable
from etcdbr.snapshot import Kind, Snapshot, new_snapshot
from etcdbr.snapstore import open_stores as build_stores
from etcdbr.snapstore.local import STAGING_DIR, LocalStore

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
LOGGER = "etcdbr.copier"


def sync_config(**kw) -> SyncConfig:
    base = dict(enabled=True, period=timedelta(hours=1), max_retries=2, retry_backoff=timedelta(milliseconds=1),
                concurrent_copies=3, max_delete_fraction=0.5)
    base.update(kw)
    return SyncConfig(**base)


def local_config(root: Path, name: str, prefix: str = "etcd", env_prefix: str = "") -> StoreConfig:
    return StoreConfig(provider="Local", container=str(root / name), prefix=prefix, env_prefix=env_prefix)


def snap(kind: Kind, start: int, last: int, minutes: int = 0, prefix: str = "etcd/v2", suffix: str = ".gz",
         final: bool = False) -> Snapshot:
    return new_snapshot(kind, start, last, prefix=prefix, compression_suffix=suffix, is_final=final,
                        created_on=T0 + timedelta(minutes=minutes))


def put(store, s: Snapshot, data: bytes) -> Snapshot:
    store.save(s, io.BytesIO(data))
    return s


def payload(s: Snapshot) -> bytes:
    # Distinct, non-trivial bytes per snapshot so a mix-up is caught by the content check.
    return hashlib.sha256(s.snap_name.encode()).digest() * (50 + s.last_revision % 7)


def contents(store) -> dict[str, bytes]:
    out = {}
    for s in store.list():
        with store.fetch(s) as fh:
            out[s.snap_name] = fh.read()
    return out


def real_delta() -> bytes:
    """A delta snapshot in the Go format: JSON events + raw SHA-256, gzip-compressed."""
    events = [
        {"etcdEvent": {"kv": {"key": base64.b64encode(b"/registry/a").decode(), "create_revision": 101,
                              "mod_revision": 101, "version": 1, "value": base64.b64encode(b"v1").decode()}},
         "time": "2024-05-01T12:00:00.000000001Z"},
        {"etcdEvent": {"type": 1, "kv": {"key": base64.b64encode(b"/registry/b").decode(), "mod_revision": 102}},
         "time": "2024-05-01T12:00:01.5Z"},
    ]
    body = json.dumps(events, separators=(",", ":")).encode()
    return gzip.compress(body + hashlib.sha256(body).digest(), mtime=0)


@pytest.fixture
def stores(tmp_path):
    primary = LocalStore(local_config(tmp_path, "primary"))
    secondary = LocalStore(local_config(tmp_path, "secondary", prefix="etcd-secondary", env_prefix="SECONDARY_"))
    primary.check()
    secondary.check()
    return primary, secondary


def run(coro):
    return asyncio.run(coro)


async def one_run(primary, secondary, cfg=None, **kw):
    copier = BackupCopier(primary, secondary, cfg or sync_config())
    try:
        return await copier.sync_once(**kw)
    finally:
        await copier.stop(1)


def messages(caplog, level=None) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and (level is None or r.levelno == level)]


# -- planning ---------------------------------------------------------------------------------
def test_plan_matches_final_and_plain_names_and_finds_orphans():
    full = snap(Kind.FULL, 0, 100)
    full_final = replace(full, is_final=True)
    delta = snap(Kind.INCR, 101, 150, 1)
    orphan = snap(Kind.INCR, 1, 50, -10)
    sec = [s.with_prefix("etcd-secondary/v2") for s in (full, orphan)]
    plan = plan_sync([full_final, delta], sec, max_delete_fraction=1.0)
    assert [s.snap_name for s in plan.to_copy] == [delta.snap_name]
    assert [s.snap_name for s in plan.to_delete] == [orphan.snap_name]
    assert full_final.copier_key() == full.copier_key() == f"/{full.snap_name}:0-100"


def test_destination_strips_final_and_keeps_layout():
    final = snap(Kind.FULL, 0, 100, final=True)
    dst = destination_for(final, "other/v2")
    assert dst.key == "other/v2/" + final.snap_name[: -len(".final")]
    assert not dst.is_final
    v1 = replace(final, prefix="etcd/v1", snap_dir="Backup-1714564800", is_final=False)
    assert destination_for(v1, "other/v2").key == f"other/v1/Backup-1714564800/{v1.snap_name}"
    assert destination_for(v1, "v2").key == f"v1/Backup-1714564800/{v1.snap_name}"


def test_plan_guard_empty_primary_and_fraction():
    sec = [snap(Kind.FULL, 0, i * 10, i, prefix="s/v2") for i in range(1, 5)]
    empty = plan_sync([], sec, max_delete_fraction=1.0)
    assert empty.to_delete == [] and len(empty.orphans) == 4
    assert "primary lists no snapshots" in empty.deletion_skipped
    prim = sec[:1]
    many = plan_sync(prim, sec, max_delete_fraction=0.5)   # 3 of 4 > 0.5
    assert many.to_delete == [] and "more than the allowed fraction 0.5" in many.deletion_skipped
    ok = plan_sync(prim, sec, max_delete_fraction=0.75)    # 3 of 4 <= 0.75
    assert len(ok.to_delete) == 3 and not ok.deletion_skipped


def test_plan_leaves_immutable_orphans_and_protected_keys():
    locked = replace(snap(Kind.INCR, 1, 5, prefix="s/v2"),
                     immutable_until=datetime.now(timezone.utc) + timedelta(days=1))
    expired = replace(snap(Kind.INCR, 6, 9, prefix="s/v2"),
                      immutable_until=datetime.now(timezone.utc) - timedelta(days=1))
    fresh = snap(Kind.INCR, 10, 12, prefix="s/v2")
    base = snap(Kind.FULL, 0, 20, prefix="p/v2")
    plan = plan_sync([base], [locked, expired, fresh], max_delete_fraction=1.0, protected_keys={fresh.copier_key()})
    assert plan.immutable == [locked]
    assert plan.to_delete == [expired]


def test_plan_replaces_copies_of_another_size():
    a = replace(snap(Kind.FULL, 0, 10), size=100)
    b = replace(a.with_prefix("s/v2"), size=99)
    plan = plan_sync([a], [b])
    assert plan.to_copy == [a] and plan.to_replace == [b]
    same = plan_sync([a], [replace(b, size=100)])
    assert same.to_copy == []


def test_select_backups_groups_fulls_with_their_deltas():
    now = T0 + timedelta(days=10)
    stray = snap(Kind.INCR, 1, 9, -100)
    f1, d1 = snap(Kind.FULL, 0, 10, 0), snap(Kind.INCR, 11, 20, 1)
    f2, d2 = snap(Kind.FULL, 0, 30, 60 * 24 * 8), snap(Kind.INCR, 31, 40, 60 * 24 * 8 + 1)
    snaps = [stray, f1, d1, f2, d2]
    assert select_backups(snaps) == snaps
    assert select_backups(snaps, max_backups=1, now=now) == [f2, d2]
    assert select_backups(snaps, max_backups=5, now=now) == [f1, d1, f2, d2]
    assert select_backups(snaps, max_age_days=5, now=now) == [f2, d2]
    assert select_backups(snaps, max_backups=0, now=now) == []


def test_own_snapshots_ignores_nested_trees_and_chunks():
    mine = snap(Kind.FULL, 0, 10, prefix="a/v2")
    legacy = replace(snap(Kind.FULL, 0, 5, prefix="a/v1"), snap_dir="Backup-1")
    nested = snap(Kind.FULL, 0, 10, prefix="a/sec/v2")
    chunk = replace(mine, is_chunk=True, kind=Kind.CHUNK, chunk_name="0000000001")
    assert own_snapshots([mine, legacy, nested, chunk], "a/v2") == [mine, legacy]


# -- runs against Local stores ----------------------------------------------------------------
def test_sync_copies_verbatim_strips_final_and_ignores_chunks(stores, caplog):
    primary, secondary = stores
    full = put(primary, snap(Kind.FULL, 0, 100, final=True), b"F" * 3000)
    delta = put(primary, snap(Kind.INCR, 101, 102, 1), real_delta())
    # A chunk leftover of an upload: one level below a snapshot name; never copied.
    chunk_dir = primary.root / "etcd/v2" / snap(Kind.FULL, 0, 200, 5).snap_name
    chunk_dir.mkdir(parents=True)
    (chunk_dir / "0000000001").write_bytes(b"part")
    assert any(s.is_chunk for s in primary.list())
    caplog.set_level(logging.INFO, logger=LOGGER)

    result = run(one_run(primary, secondary))

    assert result.ok, result.errors()
    got = contents(secondary)
    assert got == {full.snap_name[: -len(".final")]: b"F" * 3000, delta.snap_name: real_delta()}
    assert all(s.prefix == "etcd-secondary/v2" for s in secondary.list())
    assert not any(s.is_chunk for s in secondary.list())
    try:  # when the delta codec exists, prove the copied object is still a valid delta
        from etcdbr.compression import decompress_bytes
        from etcdbr.delta import decode_delta
    except ImportError:
        pass
    else:
        events = decode_delta(decompress_bytes(got[delta.snap_name], ".gz"))
        assert [e.kv.key for e in events] == [b"/registry/a", b"/registry/b"]
    assert "Found 2 snapshots to copy and 0 to delete" in messages(caplog, logging.INFO)
    assert "Successfully copied all 2 snapshots to secondary" in messages(caplog, logging.INFO)

    # Rerun: the copy without .final matches the .final original; nothing to do.
    caplog.clear()
    again = run(one_run(primary, secondary))
    assert again.ok and again.copied == [] and again.deleted == []
    assert "Found 0 snapshots to copy and 0 to delete" in messages(caplog, logging.INFO)


def test_orphan_deleted_after_primary_deletion_and_guard_on_empty_primary(stores, caplog):
    primary, secondary = stores
    snaps = [put(primary, s, payload(s)) for s in
             (snap(Kind.FULL, 0, 10), snap(Kind.INCR, 11, 20, 1), snap(Kind.INCR, 21, 30, 2))]
    assert run(one_run(primary, secondary)).ok
    primary.delete(snaps[1])
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(one_run(primary, secondary))
    assert result.deleted == [snaps[1].snap_name]
    assert "Found 0 snapshots to copy and 1 to delete" in messages(caplog, logging.INFO)
    assert {s.snap_name for s in secondary.list()} == {snaps[0].snap_name, snaps[2].snap_name}

    for s in (snaps[0], snaps[2]):
        primary.delete(s)
    caplog.clear()
    result = run(one_run(primary, secondary, sync_config(max_delete_fraction=1.0)))
    assert not result.ok and result.deleted == []
    assert len(secondary.list()) == 2
    errors = messages(caplog, logging.ERROR)
    assert any("primary lists no snapshots" in m for m in errors), errors


def test_fraction_guard_keeps_secondary(stores, caplog):
    primary, secondary = stores
    snaps = [put(primary, s, payload(s)) for s in (snap(Kind.FULL, 0, 10), snap(Kind.INCR, 11, 20, 1),
                                                   snap(Kind.INCR, 21, 30, 2))]
    assert run(one_run(primary, secondary)).ok
    primary.delete(snaps[0])
    primary.delete(snaps[1])
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(one_run(primary, secondary, sync_config(max_delete_fraction=0.5)))
    assert result.deleted == [] and "more than the allowed fraction" in result.deletion_skipped
    assert len(secondary.list()) == 3
    assert any(m.startswith("Skipping deletion of orphaned snapshots on secondary") for m in messages(caplog,
                                                                                                      logging.ERROR))


class FlakyStore(LocalStore):
    """A Local store whose fetch fails ``fail_fetches`` times per snapshot name before working."""

    def __init__(self, config, fail_fetches: dict[str, int] | None = None, error=None):
        super().__init__(config)
        self.fail_fetches = dict(fail_fetches or {})
        self.error = error or (lambda name: StoreUnavailable("network timeout", endpoint=self.display))
        self.fetches: dict[str, int] = {}
        self.lock = threading.Lock()

    def fetch(self, snapshot):
        with self.lock:
            self.fetches[snapshot.snap_name] = self.fetches.get(snapshot.snap_name, 0) + 1
            left = self.fail_fetches.get(snapshot.snap_name, 0)
            if left:
                self.fail_fetches[snapshot.snap_name] = left - 1
                raise self.error(snapshot.snap_name)
        return super().fetch(snapshot)


def test_retries_then_reports_failure_without_stopping_others(tmp_path, caplog):
    bad, flaky, good = snap(Kind.FULL, 0, 10), snap(Kind.INCR, 11, 20, 1), snap(Kind.INCR, 21, 30, 2)
    primary = FlakyStore(local_config(tmp_path, "p"), {bad.snap_name: 99, flaky.snap_name: 2})
    secondary = LocalStore(local_config(tmp_path, "s"))
    for s in (bad, flaky, good):
        put(primary, s, payload(s))
    caplog.set_level(logging.INFO, logger=LOGGER)
    before = metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_copies_total", {"outcome": "failure"}) or 0

    result = run(one_run(primary, secondary, sync_config(max_retries=2)))

    assert sorted(result.copied) == sorted([flaky.snap_name, good.snap_name])
    assert result.failed == {bad.snap_name: "network timeout"}
    assert primary.fetches[bad.snap_name] == 3          # 1 try + max_retries
    assert f"Failed to copy snapshot {bad.snap_name}: network timeout" in messages(caplog, logging.ERROR)
    assert not any(m.startswith("Successfully copied all") for m in messages(caplog))
    assert metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_copies_total", {"outcome": "failure"}) == before + 1

    # Retried on the next run once the endpoint recovers.
    primary.fail_fetches.clear()
    result = run(one_run(primary, secondary))
    assert result.copied == [bad.snap_name] and result.ok


def test_permission_errors_are_not_retried(tmp_path):
    from etcdbr.errors import PermissionDenied

    s = snap(Kind.FULL, 0, 10)
    primary = FlakyStore(local_config(tmp_path, "p"), {s.snap_name: 99},
                         error=lambda n: PermissionDenied("access denied", endpoint="Local/p"))
    secondary = LocalStore(local_config(tmp_path, "s"))
    put(primary, s, payload(s))
    result = run(one_run(primary, secondary, sync_config(max_retries=3)))
    assert result.failed == {s.snap_name: "access denied"}
    assert primary.fetches[s.snap_name] == 1


def test_backoff_is_exponential(tmp_path):
    s = snap(Kind.FULL, 0, 10)
    primary = FlakyStore(local_config(tmp_path, "p"), {s.snap_name: 99})
    secondary = LocalStore(local_config(tmp_path, "s"))
    put(primary, s, payload(s))
    t = time.monotonic()
    run(one_run(primary, secondary, sync_config(max_retries=3, retry_backoff=timedelta(milliseconds=50))))
    # waits of 50 + 100 + 200 ms between the 4 attempts
    assert 0.35 <= time.monotonic() - t < 3


class CorruptingStore(LocalStore):
    """Stores bytes correctly but reads back one flipped byte ``corrupt`` times (bit rot in transit)."""

    def __init__(self, config, corrupt: int):
        super().__init__(config)
        self.corrupt = corrupt
        self.deletes = []

    def fetch(self, snapshot):
        stream = super().fetch(snapshot)
        if self.corrupt <= 0:
            return stream
        self.corrupt -= 1
        with stream:
            data = bytearray(stream.read())
        data[len(data) // 2] ^= 0xFF
        return io.BytesIO(bytes(data))

    def delete(self, snapshot):
        self.deletes.append(snapshot.snap_name)
        super().delete(snapshot)


def test_verification_failure_deletes_bad_copy_and_counts_as_failure(tmp_path, caplog):
    s = snap(Kind.FULL, 0, 10)
    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = CorruptingStore(local_config(tmp_path, "s"), corrupt=99)
    put(primary, s, payload(s))
    caplog.set_level(logging.INFO, logger=LOGGER)
    before = metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_copies_total",
                                               {"outcome": "verification_failure"}) or 0
    result = run(one_run(primary, secondary, sync_config(max_retries=1)))
    assert list(result.failed) == [s.snap_name] and "verification failed" in result.failed[s.snap_name]
    assert secondary.list() == []                    # every bad copy was removed
    assert secondary.deletes == [s.snap_name] * 2
    assert metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_copies_total",
                                             {"outcome": "verification_failure"}) == before + 1
    assert any(m.startswith(f"Failed to copy snapshot {s.snap_name}: verification failed")
               for m in messages(caplog, logging.ERROR))

    # Transient corruption: the retry within the run succeeds.
    secondary.corrupt = 1
    result = run(one_run(primary, secondary, sync_config(max_retries=1)))
    assert result.copied == [s.snap_name] and result.ok
    assert contents(secondary) == {s.snap_name: payload(s)}


def test_short_read_from_primary_is_caught(tmp_path):
    class Truncating(LocalStore):
        def fetch(self, snapshot):
            with super().fetch(snapshot) as fh:
                return io.BytesIO(fh.read()[:-10])

    s = snap(Kind.FULL, 0, 10)
    primary = Truncating(local_config(tmp_path, "p"))
    secondary = LocalStore(local_config(tmp_path, "s"))
    put(primary, s, payload(s))
    result = run(one_run(primary, secondary, sync_config(max_retries=0)))
    assert s.snap_name in result.failed and "listing says" in result.failed[s.snap_name]
    assert secondary.list() == []


def test_size_mismatch_on_secondary_is_replaced(stores):
    primary, secondary = stores
    s = put(primary, snap(Kind.FULL, 0, 10), payload(snap(Kind.FULL, 0, 10)))
    put(secondary, s.with_prefix(secondary.prefix), b"truncated")
    result = run(one_run(primary, secondary))
    assert result.copied == [s.snap_name]
    assert contents(secondary) == {s.snap_name: payload(s)}


class ImmutableSecondary(LocalStore):
    def __init__(self, config):
        super().__init__(config)
        self.delete_calls = 0

    def delete(self, snapshot):
        self.delete_calls += 1
        raise ImmutableObject("deletion refused: retention", endpoint=self.display)


def test_immutable_orphans_are_left_and_reported_once(tmp_path, caplog):
    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = ImmutableSecondary(local_config(tmp_path, "s"))
    keep = put(primary, snap(Kind.FULL, 0, 30, 3), b"x")
    for s in (keep, snap(Kind.FULL, 0, 10), snap(Kind.FULL, 0, 20, 1)):
        put(secondary, s.with_prefix(secondary.prefix), b"x")
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(one_run(primary, secondary, sync_config(max_delete_fraction=1.0, max_retries=5)))
    assert sorted(result.immutable) == sorted([snap(Kind.FULL, 0, 10).snap_name, snap(Kind.FULL, 0, 20, 1).snap_name])
    assert secondary.delete_calls == 2                 # no retries for immutability
    assert result.ok
    warnings = [m for m in messages(caplog, logging.WARNING) if "immutable" in m]
    assert warnings == ["Left 2 orphaned snapshots on secondary: they are immutable"]


def test_listing_failure_is_not_an_empty_store(stores, caplog):
    primary, secondary = stores
    s = put(primary, snap(Kind.FULL, 0, 10), b"data")
    put(secondary, s.with_prefix(secondary.prefix), b"data")
    put(secondary, snap(Kind.FULL, 0, 5, -5, prefix=secondary.prefix), b"orphan")

    def broken(include_all=False):
        raise StoreUnavailable("connection refused", endpoint=primary.display)

    primary.list = broken
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(one_run(primary, secondary, sync_config(max_delete_fraction=1.0)))
    assert not result.ok and "cannot list the primary" in result.error
    assert len(secondary.list()) == 2
    assert metrics.REGISTRY.get_sample_value("etcdbr_snapstore_available", {"endpoint": "primary"}) == 0
    assert not any(m.startswith("Found") for m in messages(caplog))


def test_dry_run_changes_nothing(stores, caplog):
    primary, secondary = stores
    put(primary, snap(Kind.FULL, 0, 10, 1), b"a")
    put(primary, snap(Kind.INCR, 11, 12, 2), b"b")
    put(secondary, snap(Kind.FULL, 0, 5, 0, prefix=secondary.prefix), b"c")
    caplog.set_level(logging.INFO, logger=LOGGER)
    result = run(one_run(primary, secondary, sync_config(max_delete_fraction=1.0), dry_run=True))
    assert result.plan is not None and len(result.plan.to_copy) == 2 and len(result.plan.to_delete) == 1
    assert result.copied == [] and result.deleted == []
    assert [s.snap_name for s in secondary.list()] == [snap(Kind.FULL, 0, 5, 0).snap_name]
    assert "Found 2 snapshots to copy and 1 to delete" in messages(caplog, logging.INFO)


def test_v1_layout_snapshots_are_copied_into_v1(stores):
    primary, secondary = stores
    legacy = replace(snap(Kind.FULL, 0, 10, prefix="etcd/v1"), snap_dir="Backup-1714564800")
    put(primary, legacy, b"old")
    assert run(one_run(primary, secondary)).ok
    (copied,) = secondary.list()
    assert copied.key == f"etcd-secondary/v1/Backup-1714564800/{legacy.snap_name}"
    assert run(one_run(primary, secondary)).copied == []


def test_nested_secondary_prefix_is_not_copied_back(tmp_path):
    primary = LocalStore(local_config(tmp_path, "shared", prefix="etcd"))
    secondary = LocalStore(local_config(tmp_path, "shared", prefix="etcd/secondary"))
    put(primary, snap(Kind.FULL, 0, 10), b"a")
    first = run(one_run(primary, secondary))
    second = run(one_run(primary, secondary))
    assert first.copied and second.copied == [] and second.deleted == []
    assert len(primary.list()) == 2  # the listing sees both trees; the copier only its own


# -- event-driven copies, dedupe, shutdown ----------------------------------------------------
class CountingSecondary(LocalStore):
    def __init__(self, config, delay: float = 0.0):
        super().__init__(config)
        self.saves: list[str] = []
        self.delay = delay

    def save(self, snapshot, stream):
        self.saves.append(snapshot.snap_name)
        if self.delay:
            time.sleep(self.delay)
        return super().save(snapshot, stream)


async def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def test_notify_copies_at_once_and_never_twice_concurrently(tmp_path, caplog):
    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = CountingSecondary(local_config(tmp_path, "s"), delay=0.2)
    put(primary, snap(Kind.FULL, 0, 10), b"base")
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(period=timedelta(hours=1)))
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        new = put(primary, snap(Kind.INCR, 11, 20, 1), b"delta")
        # Three notifications from other threads, as the snapshotter's listener would send them.
        threads = [threading.Thread(target=copier.notify, args=(new,)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        await wait_for(lambda: any(s.snap_name == new.snap_name for s in secondary.list()), timeout=5)
        await wait_for(lambda: copier.status()["inFlight"] == 0)
        # A sync run racing an in-flight notified copy shares it instead of copying again.
        other = put(primary, snap(Kind.INCR, 21, 30, 2), b"delta2")
        copier.notify(other)
        await wait_for(lambda: copier.status()["inFlight"] == 1)
        result = await copier.sync_once()
        status = copier.status()
        await copier.stop(5)
        return new, other, result, status

    new, other, result, status = run(scenario())
    assert secondary.saves.count(new.snap_name) == 1
    assert secondary.saves.count(other.snap_name) == 1
    assert result.copied == [other.snap_name] and result.ok
    # Counts follow the copies: all three snapshots are on both endpoints.
    assert status["pending"] == 0 and status["secondary"]["snapshots"] == 3 and status["primary"]["snapshots"] == 3
    info = messages(caplog, logging.INFO)
    assert "Starting backup copier..." in info
    assert info.index("Starting backup copier...") < info.index("Found 1 snapshots to copy and 0 to delete")


class SlowStream(io.RawIOBase):
    def __init__(self, size: int, block: int = 64 * 1024, pause: float = 0.02):
        self.left, self.block, self.pause = size, block, pause
        self.started = threading.Event()

    def readable(self):
        return True

    def read(self, n=-1):
        self.started.set()
        if self.left <= 0:
            return b""
        time.sleep(self.pause)
        n = min(self.left, self.block if n is None or n < 0 else min(n, self.block))
        self.left -= n
        return b"z" * n


class SlowPrimary(LocalStore):
    def __init__(self, config):
        super().__init__(config)
        self.streams = []

    def fetch(self, snapshot):
        stream = SlowStream(50 * 1024 * 1024)
        self.streams.append(stream)
        return stream


def test_stop_aborts_a_copy_longer_than_the_grace_and_names_it(tmp_path, caplog):
    # 50 MiB at 64 KiB per 20 ms takes ~16 s: the drain gives it the grace (1 s), then aborts it.
    primary = SlowPrimary(local_config(tmp_path, "p"))
    secondary = LocalStore(local_config(tmp_path, "s"))
    big = put(primary, snap(Kind.FULL, 0, 10), b"listed only; fetch streams 50 MiB slowly")
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config())
        await copier.start()
        await wait_for(lambda: primary.streams and primary.streams[0].started.is_set())
        await asyncio.sleep(0.1)
        t = time.monotonic()
        await copier.stop(1)
        return time.monotonic() - t, copier.status()

    took, status = run(scenario())
    assert 1 <= took < 3
    assert secondary.list() == []
    staging = secondary.root / STAGING_DIR
    assert not staging.exists() or list(staging.iterdir()) == []
    assert status["lastRun"]["succeeded"] is False
    assert not any(m.startswith("Failed to copy snapshot") for m in messages(caplog))
    left = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
            and r.getMessage() == "snapshot left behind on the primary at shutdown; the next start copies it"]
    assert [r.snapshot for r in left] == [big.snap_name]
    assert "backup copier stopped with 1 snapshots not copied to the secondary" in messages(caplog, logging.WARNING)


def test_status_has_counts_and_no_secrets(stores):
    primary, secondary = stores
    put(primary, snap(Kind.FULL, 0, 10), b"a")
    from etcdbr import logs

    logs.register_secret("s3cr3t-value")

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config())
        before = copier.status()
        await copier.sync_once()
        after = copier.status()
        await copier.stop(1)
        return before, after

    before, after = run(scenario())
    assert before["lastRun"] is None and before["primary"]["available"] is None
    assert after["primary"] == {"endpoint": primary.display, "available": True, "snapshots": 1}
    assert after["secondary"]["snapshots"] == 1  # listed empty, then the verified copy counted
    assert after["pending"] == 0 and after["lagSeconds"] == 0.0
    assert after["lastRun"]["copied"] == 1 and after["lastRun"]["errors"] == []
    assert after["secondsSinceLastSuccessfulSync"] is not None
    json.dumps(after)
    assert metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_pending_snapshots") == 0
    assert metrics.REGISTRY.get_sample_value("etcdbr_snapstore_snapshots", {"endpoint": "primary"}) == 1
    assert (metrics.REGISTRY.get_sample_value("etcdbr_backup_sync_last_success_timestamp") or 0) > 0


def test_errors_in_status_are_redacted(tmp_path):
    from etcdbr import logs

    logs.register_secret("AKIAEXAMPLESECRET")
    s = snap(Kind.FULL, 0, 10)
    primary = FlakyStore(local_config(tmp_path, "p"), {s.snap_name: 99},
                         error=lambda n: StoreUnavailable("bad key AKIAEXAMPLESECRET", endpoint="x"))
    secondary = LocalStore(local_config(tmp_path, "s"))
    put(primary, s, b"a")

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(max_retries=0))
        await copier.sync_once()
        status = copier.status()
        await copier.stop(1)
        return status

    status = run(scenario())
    assert "AKIAEXAMPLESECRET" not in json.dumps(status)
    assert status["lastRun"]["errors"] == [f"copy {s.snap_name}: bad key ******"]


# -- startup ----------------------------------------------------------------------------------
def make_config(tmp_path, *, primary_ok=True, secondary_ok=True, enabled=True) -> Config:
    cfg = Config()
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg.store = local_config(tmp_path, "p1" if primary_ok else "not-a-dir/p1")
    cfg.secondary = local_config(tmp_path, "s1" if secondary_ok else "not-a-dir/s1", env_prefix="SECONDARY_")
    cfg.sync = sync_config(enabled=enabled)
    return cfg


def test_build_stores_both_ok_logs_creation(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    primary, secondary = build_stores(make_config(tmp_path))
    assert secondary is not None
    p, s = str(tmp_path / "p1"), str(tmp_path / "s1")
    assert f"Creating snapstore with backup copier - Primary: Local:{p}, Secondary: Local:{s}" in messages(caplog,
                                                                                                           logging.INFO)


def test_build_stores_secondary_failure_means_single_endpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    primary, secondary = build_stores(make_config(tmp_path, secondary_ok=False))
    assert secondary is None and primary is not None
    assert messages(caplog, logging.WARNING) == ["Only primary snapstore available, using single endpoint"]
    assert not any(m.startswith("Creating snapstore") for m in messages(caplog))


def test_build_stores_primary_failure_is_fatal(tmp_path):
    with pytest.raises(StoreError) as err:
        build_stores(make_config(tmp_path, primary_ok=False))
    assert "both" not in str(err.value)


def test_build_stores_both_failing_is_a_startup_error(tmp_path):
    with pytest.raises(StoreError, match="both snapstores failed to initialise"):
        build_stores(make_config(tmp_path, primary_ok=False, secondary_ok=False))


def test_build_stores_sync_disabled_or_unconfigured(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    _, secondary = build_stores(make_config(tmp_path, enabled=False))
    assert secondary is None
    cfg = make_config(tmp_path)
    cfg.secondary = StoreConfig(env_prefix="SECONDARY_")
    _, secondary = build_stores(cfg)
    assert secondary is None
    assert "Only primary snapstore available, using single endpoint" in messages(caplog, logging.WARNING)
    cfg = make_config(tmp_path)
    cfg.secondary = replace(cfg.store, env_prefix="SECONDARY_")
    assert build_stores(cfg)[1] is None


def test_build_stores_config_error_on_secondary_is_single_endpoint(tmp_path, caplog):
    cfg = make_config(tmp_path)
    calls = []

    def opener(sc):
        calls.append(sc.role)
        if sc.role == "secondary":
            raise ConfigError("bad credentials file")
        return LocalStore(sc)

    caplog.set_level(logging.INFO, logger=LOGGER)
    primary, secondary = build_stores(cfg, opener=opener)
    assert secondary is None and calls == ["primary", "secondary"]
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert record.reason == "bad credentials file"


# -- alert rules and dashboard ----------------------------------------------------------------
REPO = Path(__file__).resolve().parents[2]
METRIC_REF = re.compile(r"\b(etcdbr_[a-z0-9_]+)\b(\{[^}]*\})?")


def exported_metrics() -> dict[str, set[str]]:
    """Every series name etcdbr.metrics can export, with the label names allowed on it."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count", "")}
    for value in vars(metrics).values():
        if not hasattr(value, "_labelnames") or not hasattr(value, "_type"):
            continue
        base = value._name
        for suffix in suffixes[value._type]:
            names[base + suffix] = set(value._labelnames) | ({"le"} if suffix == "_bucket" else set())
    return names


def check_expr(expr: str, known: dict[str, set[str]]) -> list[str]:
    used = []
    for name, selector in METRIC_REF.findall(expr):
        assert name in known, f"{name} is not exported by etcdbr.metrics (in {expr!r})"
        # Only labels the metric defines, plus the target labels a scrape adds.
        for label in re.findall(r"([a-z_]+)\s*[=!]~?", selector or ""):
            assert label in known[name] | {"namespace", "pod", "job", "instance"}, (name, label)
        used.append(name)
    return used


def test_prometheus_rules_parse_and_reference_existing_metrics():
    import yaml

    doc = yaml.safe_load((REPO / "deploy/prometheus/etcdbr-rules.yaml").read_text())
    assert doc["kind"] == "PrometheusRule" and doc["apiVersion"] == "monitoring.coreos.com/v1"
    known = exported_metrics()
    assert "etcdbr_backup_sync_copies_total" in known and "etcdbr_backup_sync_lag_seconds_bucket" in known
    used, alerts = set(), []
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule)
            used.update(check_expr(rule["expr"], known))
            if "alert" in rule:
                alerts.append(rule["alert"])
                assert rule["labels"]["severity"] in ("critical", "warning", "info")
                assert rule["annotations"]["summary"]
    assert len(alerts) == len(set(alerts)) >= 6
    sync_metrics = {m for m in known if "backup_sync" in m or m.startswith("etcdbr_snapstore_")}
    sync_metrics -= {"etcdbr_snapstore_latest_deltas_total", "etcdbr_snapstore_latest_deltas_revisions_total",
                     "etcdbr_backup_sync_duration_seconds_sum", "etcdbr_backup_sync_duration_seconds_count",
                     "etcdbr_backup_sync_lag_seconds_sum", "etcdbr_backup_sync_lag_seconds_count",
                     "etcdbr_snapstore_snapshots", "etcdbr_backup_sync_duration_seconds_bucket"}
    assert sync_metrics - used == set(), "every copier metric has an alert"


def test_grafana_dashboard_parses_and_references_existing_metrics():
    dash = json.loads((REPO / "deploy/grafana/etcdbr-dual-endpoint.json").read_text())
    known = exported_metrics()
    used = set()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used.update(check_expr(target["expr"], known))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            used.update(check_expr(var["query"]["query"], known))
    copier_metrics = {name for name in known if "backup_sync" in name or name in (
        "etcdbr_snapstore_available", "etcdbr_snapstore_snapshots", "etcdbr_snapstore_snapshot_difference")}
    assert copier_metrics - used == set(), "the dashboard shows every copier metric"


def test_metric_check_can_fail():
    with pytest.raises(AssertionError):
        check_expr("rate(etcdbr_backup_sync_copies{outcome='x'}[5m])", exported_metrics())
    with pytest.raises(AssertionError):
        check_expr('etcdbr_snapstore_available{role="secondary"}', exported_metrics())


def test_snapshot_copied_after_primary_listing_is_not_an_orphan(tmp_path):
    """A snapshot uploaded just after the run listed the primary, and copied by notify() before
    the run lists the secondary, is on the secondary only: it must not be deleted as an orphan."""
    late = snap(Kind.INCR, 11, 20, 5)

    class Primary(LocalStore):
        copier = None

        def list(self, include_all=False):
            listed = super().list(include_all)
            if self.copier is not None and not any(s.snap_name == late.snap_name for s in listed):
                put(self, late, b"late delta")
                self.copier.notify(late)
            return listed

    class SlowSecondary(LocalStore):
        def list(self, include_all=False):
            time.sleep(0.5)   # the notified copy finishes meanwhile
            return super().list(include_all)

    primary = Primary(local_config(tmp_path, "p"))
    secondary = SlowSecondary(local_config(tmp_path, "s"))
    put(primary, snap(Kind.FULL, 0, 10), b"base")

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(max_delete_fraction=1.0))
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        primary.copier = copier
        result = await copier.sync_once()
        await copier.stop(2)
        return result

    result = run(scenario())
    assert result.deleted == []
    assert late.snap_name in {s.snap_name for s in secondary.list()}


# -- drain, then stop ---------------------------------------------------------------------------
def test_stop_drains_queued_and_late_notified_snapshots_before_stopping(tmp_path, caplog):
    # The shutdown order of a leader term: the copier begins draining, then the snapshotter
    # uploads its final delta and notifies; stop() must still copy and verify it.
    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = CountingSecondary(local_config(tmp_path, "s"), delay=0.3)
    put(primary, snap(Kind.FULL, 0, 10), b"base")
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config())
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        queued = put(primary, snap(Kind.INCR, 11, 20, 1), payload(snap(Kind.INCR, 11, 20, 1)))
        copier.notify(queued)                      # in flight when the drain begins
        copier.begin_drain()
        await asyncio.sleep(0.05)
        final = put(primary, snap(Kind.INCR, 21, 30, 2, final=True), payload(snap(Kind.INCR, 21, 30, 2)))
        copier.notify(final)                       # notified while draining
        t = time.monotonic()
        await copier.stop(10)
        return queued, final, time.monotonic() - t, copier.status()

    queued, final, took, status = run(scenario())
    assert took < 5                                # done when drained, not at the grace
    assert {s.copier_key() for s in secondary.list()} == {s.copier_key() for s in primary.list()}
    copied = contents(secondary)
    assert copied[final.snap_name[: -len(".final")]] == contents(primary)[final.snap_name]
    assert copied[queued.snap_name] == contents(primary)[queued.snap_name]
    assert status["runs"] == 1                     # no sync run started while draining
    info = messages(caplog, logging.INFO)
    assert "backup copier draining: no new sync runs; copying what is queued and in flight" in info
    assert "backup copier stopped; the secondary holds every snapshot it was given" in info
    assert not messages(caplog, logging.WARNING)


def test_stop_gives_snapshots_a_failed_copy_left_pending_one_more_try(tmp_path, caplog):
    s = snap(Kind.INCR, 11, 20, 1)
    primary = FlakyStore(local_config(tmp_path, "p"), {s.snap_name: 1})
    secondary = LocalStore(local_config(tmp_path, "s"))
    put(primary, snap(Kind.FULL, 0, 10), b"base")
    put(primary, s, payload(s))
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(max_retries=0))
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        before = copier.status()
        await copier.stop(5)
        return before

    before = run(scenario())
    assert before["pending"] == 1 and before["lastRun"]["failed"] == 1
    assert {x.copier_key() for x in secondary.list()} == {x.copier_key() for x in primary.list()}
    assert primary.fetches[s.snap_name] == 2


# -- outages are visible at once ------------------------------------------------------------------
def test_secondary_outage_warns_and_flips_at_the_first_failed_copy_then_recovers(tmp_path, caplog):
    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = LocalStore(local_config(tmp_path, "s", env_prefix="SECONDARY_"))
    primary.check()
    secondary.check()
    put(primary, snap(Kind.FULL, 0, 10), b"base")
    caplog.set_level(logging.INFO, logger=LOGGER)
    def up():
        return metrics.REGISTRY.get_sample_value("etcdbr_snapstore_available", {"endpoint": "secondary"})

    aside = tmp_path / "s-unmounted"

    async def scenario():
        # Periodic runs every hour, the copy's retry after 1.5 s: only the first failed copy
        # itself can flip the state within the first second.
        copier = BackupCopier(primary, secondary, sync_config(max_retries=1, retry_backoff=timedelta(seconds=1.5),
                                                              period=timedelta(hours=1)))
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        assert copier.status()["secondary"]["available"] is True and up() == 1
        secondary.root.rename(aside)                 # the volume goes away; a file is left in its place
        secondary.root.write_text("not the secondary")
        during = put(primary, snap(Kind.INCR, 11, 20, 1), b"during the outage")
        t = time.monotonic()
        copier.notify(during)
        await wait_for(lambda: copier.status()["secondary"]["available"] is False, timeout=1)
        flipped_after, metric_during = time.monotonic() - t, up()
        await asyncio.sleep(0.5)
        secondary.root.unlink()
        aside.rename(secondary.root)                 # back, with its contents
        await wait_for(lambda: any(r.getMessage().startswith("Secondary snapstore available again")
                                   for r in caplog.records), timeout=10)
        status = copier.status()
        await copier.stop(1)
        return flipped_after, metric_during, status, during

    flipped_after, metric_during, status, during = run(scenario())
    assert flipped_after < 1 and metric_during == 0
    outage = [r for r in caplog.records if r.name == LOGGER and r.getMessage() == "Secondary snapstore unavailable"]
    assert len(outage) == 1 and outage[0].levelno == logging.WARNING
    assert outage[0].endpoint == secondary.display and "is not a directory" in outage[0].reason
    assert status["secondary"]["available"] is True and up() == 1
    assert status["pending"] == 0 and status["secondary"]["snapshots"] == 2
    recovered = [r for r in caplog.records if r.name == LOGGER and r.getMessage().startswith(
        "Secondary snapstore available again after ")]
    assert len(recovered) == 1 and recovered[0].levelno == logging.INFO
    assert recovered[0].copies_caught_up == 1 and recovered[0].down_seconds >= 0.5
    assert "; 1 snapshots copied to catch up" in recovered[0].getMessage()
    assert during.copier_key() in {s.copier_key() for s in secondary.list()}


def test_a_vanished_primary_is_an_outage_and_no_deletion_is_ever_planned(tmp_path, caplog):
    import shutil

    primary = LocalStore(local_config(tmp_path, "p"))
    secondary = LocalStore(local_config(tmp_path, "s", env_prefix="SECONDARY_"))
    primary.check()
    secondary.check()
    for s in (snap(Kind.FULL, 0, 10), snap(Kind.INCR, 11, 20, 1)):
        put(primary, s, payload(s))
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(max_delete_fraction=1.0))
        first = await copier.sync_once()
        shutil.rmtree(primary.root)            # the primary's container disappears
        second = await copier.sync_once()
        status = copier.status()
        await copier.stop(1)
        return first, second, status

    first, second, status = run(scenario())
    assert first.ok and len(first.copied) == 2
    # Not "0 snapshots, so delete both from the secondary": the run fails and plans nothing.
    assert second.plan is None and second.deleted == [] and second.planned_deletions == 0
    assert second.error.startswith(f"cannot list the primary snapstore {primary.display}: ")
    assert "has disappeared" in second.error
    assert len(secondary.list()) == 2
    assert status["primary"]["available"] is False
    assert "Primary snapstore unavailable" in messages(caplog, logging.WARNING)
