"""The BackupCopier between real endpoints of different providers (SeaweedFS S3 primary,
fake-gcs-server secondary), between two buckets of one S3 server (server-side copy), through an
outage of the secondary's server, and aborted in the middle of a large copy that outlasts the
shutdown grace.

Snapshot payloads are synthetic bytes under real snapshot names (the copier copies opaque
objects), plus one real compressed delta that must still decode after the copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import threading
import time
import tracemalloc
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from etcdbr import metrics
from etcdbr.compression import compress_bytes, decompress_bytes, suffix_for
from etcdbr.config import Config, StoreConfig, SyncConfig
from etcdbr.copier import BackupCopier
from etcdbr.delta import DeltaEncoder, Event, EventType, KeyValue, decode_delta
from etcdbr.errors import ObjectNotFound, StoreError, StoreUnavailable
from etcdbr.retry import STORE_PART, Policy
from etcdbr.snapshot import Kind, Snapshot, new_snapshot
from etcdbr.snapstore import open_store
from etcdbr.snapstore import open_stores as build_stores
from services import S3Server, unique_name

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LOGGER = "etcdbr.copier"
T0 = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


# -- endpoints ----------------------------------------------------------------------------------
@pytest.fixture
def s3_creds(s3_server, tmp_path, monkeypatch) -> Path:
    path = tmp_path / "aws.json"
    path.write_text(json.dumps({"accessKeyID": s3_server.access_key, "secretAccessKey": s3_server.secret_key,
                                "region": s3_server.region}))
    for prefix in ("", "SECONDARY_"):
        monkeypatch.delenv(prefix + "AWS_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv(prefix + "AWS_APPLICATION_CREDENTIALS_JSON", str(path))
    return path


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    for var in ("GOOGLE_APPLICATION_CREDENTIALS", "SECONDARY_GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(var, raising=False)
    return gcs_server


def s3_config(server, bucket: str, prefix: str = "etcd", env_prefix: str = "") -> StoreConfig:
    return StoreConfig(provider="S3", container=bucket, prefix=prefix, endpoint_override=server.endpoint,
                       max_parallel_chunk_uploads=2, env_prefix=env_prefix)


def gcs_config(server, bucket: str, prefix: str = "etcd-secondary") -> StoreConfig:
    return StoreConfig(provider="GCS", container=bucket, prefix=prefix, endpoint_override=server.endpoint,
                       max_parallel_chunk_uploads=2, env_prefix="SECONDARY_")


def sync_config(**kw) -> SyncConfig:
    base = dict(enabled=True, period=timedelta(hours=1), max_retries=1, retry_backoff=timedelta(milliseconds=50),
                concurrent_copies=4, max_delete_fraction=0.5)
    base.update(kw)
    return SyncConfig(**base)


def run_sync_once(primary, secondary, **config):
    """One BackupCopier.sync_once between the two stores, the copier stopped afterwards."""
    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(**config))
        try:
            return await copier.sync_once()
        finally:
            await copier.stop(1)

    return asyncio.run(scenario())


@pytest.fixture
def stores_to_close():
    opened = []
    yield opened
    for store in opened:
        store.close()


# -- snapshots ----------------------------------------------------------------------------------
def real_delta(start: int) -> bytes:
    enc = DeltaEncoder()
    for i in range(50):
        rev = start + i
        if i % 10 == 9:
            enc.add(Event(EventType.DELETE, KeyValue(f"/registry/k{i - 1}".encode(), mod_revision=rev)))
        else:
            enc.add(Event(EventType.PUT, KeyValue(f"/registry/k{i}".encode(), os.urandom(64), create_revision=rev,
                                                  mod_revision=rev, version=1)))
    return compress_bytes(enc.finish(), "gzip")


def seed(store, n_deltas: int = 3, big: int = 0) -> dict[str, bytes]:
    """A full (final) snapshot, deltas (the first a real compressed delta), returns name -> bytes."""
    out = {}
    full = new_snapshot(Kind.FULL, 0, 100, prefix=store.prefix, compression_suffix=".gz", is_final=True,
                        created_on=T0)
    data = os.urandom(big or 300 * 1024)
    store.save(full, io.BytesIO(data))
    out[full.snap_name] = data
    start = 101
    for i in range(n_deltas):
        snap = new_snapshot(Kind.INCR, start, start + 49, prefix=store.prefix, compression_suffix=suffix_for("gzip"),
                            created_on=T0 + timedelta(minutes=i + 1))
        data = real_delta(start) if i == 0 else os.urandom(20_000 + i)
        store.save(snap, io.BytesIO(data))
        out[snap.snap_name] = data
        start += 50
    return out


def digest_map(store) -> dict[str, tuple[int, str]]:
    """copier key -> (size, sha256) of every snapshot, read back through the store."""
    out = {}
    for snap in store.list():
        if snap.is_chunk:
            continue
        try:
            with store.fetch(snap) as fh:
                data = fh.read()
        except ObjectNotFound:   # deleted by a copier run between our listing and this read
            continue
        out[snap.copier_key()] = (len(data), hashlib.sha256(data).hexdigest())
    return out


async def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def messages(caplog, level=None) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and (level is None or r.levelno == level)]


# -- S3 primary, GCS secondary ------------------------------------------------------------------
def test_s3_to_gcs_sync_notify_and_orphans(s3_server, s3_bucket, gcs_env, gcs_bucket, s3_creds, caplog,
                                           stores_to_close):
    config = Config(store=s3_config(s3_server, s3_bucket), secondary=gcs_config(gcs_env, gcs_bucket),
                    sync=sync_config(period=timedelta(seconds=1)))
    caplog.set_level(logging.INFO, logger=LOGGER)
    primary, secondary = build_stores(config)
    stores_to_close.extend([primary, secondary])
    assert (f"Creating snapstore with backup copier - Primary: S3/{s3_bucket}, Secondary: GCS/{gcs_bucket}"
            in messages(caplog, logging.INFO))
    # 12 MiB: more than two 5 MiB parts, so the GCS side composes components.
    payloads = seed(primary, n_deltas=3, big=12 * MiB + 123)

    async def scenario():
        copier = BackupCopier(primary, secondary, config.sync)
        await copier.start()
        try:
            await wait_for(lambda: digest_map(secondary) == digest_map(primary))
            # Event-driven: a new upload reaches the secondary well before the next periodic run.
            new = new_snapshot(Kind.INCR, 251, 260, prefix=primary.prefix, compression_suffix=".gz")
            primary.save(new, io.BytesIO(b"fresh delta"))
            t = time.monotonic()
            threading.Thread(target=copier.notify, args=(new,)).start()
            await wait_for(lambda: new.copier_key() in digest_map(secondary), timeout=10, interval=0.02)
            notify_lag = time.monotonic() - t
            # A snapshot garbage-collected on the primary leaves the secondary at the next run.
            victim = next(s for s in primary.list() if s.start_revision == 151)
            primary.delete(victim)
            await wait_for(lambda: victim.copier_key() not in digest_map(secondary))
            return copier.status(), notify_lag
        finally:
            await copier.stop(5)

    status, notify_lag = asyncio.run(scenario())
    assert notify_lag < 5
    assert digest_map(secondary) == digest_map(primary)
    names = {s.snap_name for s in secondary.list()}
    full_name = next(n for n in payloads if n.endswith(".final"))
    assert full_name.removesuffix(".final") in names and full_name not in names
    # Bytes are verbatim: the copied delta is still a valid compressed delta.
    delta = next(s for s in secondary.list() if s.start_revision == 101)
    with secondary.fetch(delta) as fh:
        events = decode_delta(decompress_bytes(fh.read(), delta.compression_suffix))
    assert len(events) == 50 and events[9].type is EventType.DELETE
    assert status["secondary"]["endpoint"] == f"GCS/{gcs_bucket}" and status["secondary"]["available"] is True
    assert status["pending"] == 0 and status["lastRun"]["errors"] == []
    info = messages(caplog, logging.INFO)
    assert "Starting backup copier..." in info
    assert "Found 4 snapshots to copy and 0 to delete" in info
    assert "Successfully copied all 4 snapshots to secondary" in info
    assert "Found 0 snapshots to copy and 1 to delete" in info
    assert metrics.REGISTRY.get_sample_value("etcdbr_snapstore_available", {"endpoint": "secondary"}) == 1
    # Nothing of the uploads is left staged on the GCS side.
    raw = [b.name for b in gcs_env.client().list_blobs(gcs_bucket)]
    assert all(".etcdbr-staging" not in n for n in raw), raw


def test_empty_primary_deletes_nothing(s3_server, s3_bucket, gcs_env, gcs_bucket, s3_creds, caplog, stores_to_close):
    primary = open_store(s3_config(s3_server, s3_bucket))
    secondary = open_store(gcs_config(gcs_env, gcs_bucket))
    stores_to_close.extend([primary, secondary])
    seed(secondary, n_deltas=2)
    before = digest_map(secondary)
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(max_delete_fraction=1.0))
        try:
            return await copier.sync_once()
        finally:
            await copier.stop(1)

    result = asyncio.run(scenario())
    assert result.deleted == [] and not result.ok
    assert digest_map(secondary) == before
    assert "Found 0 snapshots to copy and 3 to delete" in messages(caplog, logging.INFO)
    assert any(m.startswith("Skipping deletion of orphaned snapshots on secondary: the primary lists no snapshots")
               for m in messages(caplog, logging.ERROR))


def test_startup_failures(s3_server, s3_bucket, gcs_env, gcs_bucket, s3_creds, caplog, stores_to_close):
    caplog.set_level(logging.INFO, logger=LOGGER)
    missing_gcs = gcs_config(gcs_env, unique_name("nobucket"))
    missing_s3 = s3_config(s3_server, unique_name("nobucket"))
    # Secondary broken: single endpoint, the primary works.
    primary, secondary = build_stores(Config(store=s3_config(s3_server, s3_bucket), secondary=missing_gcs,
                                             sync=sync_config()))
    stores_to_close.append(primary)
    assert secondary is None and primary.list() == []
    assert messages(caplog, logging.WARNING) == ["Only primary snapstore available, using single endpoint"]
    # Primary broken: fatal even with a working secondary.
    with pytest.raises(StoreError) as err:
        build_stores(Config(store=missing_s3, secondary=gcs_config(gcs_env, gcs_bucket), sync=sync_config()))
    assert "both" not in str(err.value)
    # Both broken: a startup error naming both.
    with pytest.raises(StoreError, match="both snapstores failed to initialise"):
        build_stores(Config(store=missing_s3, secondary=missing_gcs, sync=sync_config()))


# -- two buckets on one S3 server: server-side copy ---------------------------------------------
def test_same_s3_server_copies_server_side_and_verifies(s3_server, s3_creds, caplog, stores_to_close):
    b1, b2 = s3_server.create_bucket(unique_name("prim")), s3_server.create_bucket(unique_name("sec"))
    primary = open_store(s3_config(s3_server, b1))
    secondary = open_store(s3_config(s3_server, b2, prefix="etcd", env_prefix="SECONDARY_"))
    stores_to_close.extend([primary, secondary])
    assert primary.service_identity == secondary.service_identity
    seed(primary, n_deltas=2, big=6 * MiB)
    server_side = []
    real_copy = secondary.copy_from

    def spy(other, src, dst):   # records the outcome of the real server-side copy
        done = real_copy(other, src, dst)
        server_side.append(done)
        return done

    secondary.copy_from = spy
    streamed = []
    real_save = secondary.save
    secondary.save = lambda snap, stream: streamed.append(snap.snap_name) or real_save(snap, stream)

    result = run_sync_once(primary, secondary)
    assert result.ok and len(result.copied) == 3
    assert server_side == [True, True, True] and streamed == []
    assert digest_map(secondary) == digest_map(primary)
    assert sorted(s.snap_name for s in secondary.list()) == sorted(
        n.removesuffix(".final") for n in (s.snap_name for s in primary.list()))


def _count_fetches(store) -> list[str]:
    fetched: list[str] = []
    real = store.fetch
    store.fetch = lambda snap: fetched.append(snap.snap_name) or real(snap)
    return fetched


@pytest.mark.parametrize("digests_agree", [True, False])
@pytest.mark.parametrize("provider", ["S3", "GCS"])
def test_metadata_verification_trusts_the_services_digest_only_when_it_agrees(
        provider, digests_agree, request, caplog, stores_to_close):
    if provider == "S3":
        server = request.getfixturevalue("s3_server")
        request.getfixturevalue("s3_creds")
        b1, b2 = server.create_bucket(unique_name("prim")), server.create_bucket(unique_name("sec"))
        primary = open_store(s3_config(server, b1))
        secondary = open_store(s3_config(server, b2, prefix="etcd", env_prefix="SECONDARY_"))
    else:
        server = request.getfixturevalue("gcs_env")
        b1, b2 = server.create_bucket(unique_name("prim")), server.create_bucket(unique_name("sec"))
        primary = open_store(replace(gcs_config(server, b1, prefix="etcd"), env_prefix=""))
        secondary = open_store(gcs_config(server, b2, prefix="etcd"))
    stores_to_close.extend([primary, secondary])
    assert primary.service_identity == secondary.service_identity
    # the full is a multipart object (S3: "<md5>-2" ETag; GCS: composed, CRC32C only)
    seed(primary, n_deltas=2, big=6 * MiB)
    from_primary, from_secondary = _count_fetches(primary), _count_fetches(secondary)
    if not digests_agree:  # as if the service reported a digest of other bytes for the copies
        real = secondary.content_fingerprint
        secondary.content_fingerprint = lambda snap: (real(snap)[0], "0" * 32)
    else:  # the service vouches for these copies
        for snap in primary.list():
            assert primary.content_fingerprint(snap) is not None

    with caplog.at_level(logging.INFO, logger="etcdbr.copier"):
        result = run_sync_once(primary, secondary, verify="metadata")
    assert result.ok and len(result.copied) == 3
    fallbacks = [m for m in messages(caplog) if "verifying by content" in m]
    if digests_agree:
        assert from_primary == [] and from_secondary == [] and fallbacks == []
    else:  # every copy read back from both stores, as with --backup-sync-verify=content
        assert len(from_primary) == 3 and len(from_secondary) == 3 and len(fallbacks) == 3
    assert digest_map(secondary) == digest_map(primary)


def test_copy_streams_with_bounded_memory(s3_server, s3_bucket, s3_creds, gcs_env, gcs_bucket, stores_to_close):
    primary = open_store(s3_config(s3_server, s3_bucket))
    secondary = open_store(gcs_config(gcs_env, gcs_bucket))
    stores_to_close.extend([primary, secondary])
    size = 48 * MiB
    big = new_snapshot(Kind.FULL, 0, 5000, prefix=primary.prefix, compression_suffix=".gz", created_on=T0)
    block = os.urandom(MiB)
    primary.save(big, io.BufferedReader(_Repeat(block, size)))

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config(concurrent_copies=1))
        try:
            return await copier.sync_once()
        finally:
            await copier.stop(1)

    tracemalloc.start()
    try:
        result = asyncio.run(scenario())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and result.bytes_copied == size
    # The secondary's parts in flight (2) plus one being read, the read-ahead buffers and hashing blocks.
    bound = 5 * MiB * (2 + 3) + 8 * MiB
    assert peak < bound, f"copying {size // MiB} MiB peaked at {peak / MiB:.1f} MiB of Python allocations"
    (copied,) = secondary.list()
    assert copied.size == size


class _Repeat(io.RawIOBase):
    def __init__(self, block: bytes, size: int) -> None:
        self.block, self.left = block, size

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.left, len(self.block))
        buf[:n] = self.block[:n]
        self.left -= n
        return n


# -- outage of the secondary's server -----------------------------------------------------------
@pytest.fixture
def own_s3(tmp_path):
    server = S3Server(tmp_path / "secondary-s3")
    server.start()
    yield server
    server.stop(grace=2)   # SIGKILL soon: its data is thrown away anyway
    server.cleanup()


def test_refused_server_side_copy_falls_back_to_streaming(tmp_path, monkeypatch, caplog, stores_to_close):
    # The secondary's credentials may write their own bucket but not read the primary's: the
    # service refuses CopyObject, and the copier must stream the bytes (read with the primary's
    # credentials) instead, verified all the same.
    primary_bucket, secondary_bucket = unique_name("prim"), unique_name("sec")
    limited = {"name": "secondary-only", "credentials": [{"accessKey": "SECONDARYONLY", "secretKey": "s" * 40}],
               "actions": [f"{a}:{secondary_bucket}" for a in ("Read", "Write", "List")]}
    server = S3Server(tmp_path / "s3-two-identities", extra_identities=[limited])
    server.start()
    try:
        server.create_bucket(primary_bucket)
        server.create_bucket(secondary_bucket)
        for prefix, key, secret in (("", server.access_key, server.secret_key),
                                    ("SECONDARY_", "SECONDARYONLY", "s" * 40)):
            path = tmp_path / f"{prefix or 'PRIMARY_'}aws.json"
            path.write_text(json.dumps({"accessKeyID": key, "secretAccessKey": secret, "region": server.region}))
            monkeypatch.setenv(f"{prefix}AWS_APPLICATION_CREDENTIALS_JSON", str(path))
        primary = open_store(s3_config(server, primary_bucket))
        secondary = open_store(s3_config(server, secondary_bucket, prefix="etcd", env_prefix="SECONDARY_"))
        stores_to_close.extend([primary, secondary])
        assert primary.service_identity == secondary.service_identity  # so a server-side copy is tried
        seed(primary, n_deltas=2, big=6 * MiB)

        with caplog.at_level(logging.INFO):
            result = run_sync_once(primary, secondary)
        assert result.ok and len(result.copied) == 3, result.to_json()
        refused = [r for r in caplog.records if r.getMessage() == "server-side copy refused; streaming instead"]
        assert len(refused) == 3
        assert digest_map(secondary) == digest_map(primary)
    finally:
        server.stop(grace=2)
        server.cleanup()


def test_secondary_outage_leaves_primary_unaffected_and_catches_up(s3_server, s3_bucket, s3_creds, own_s3, tmp_path,
                                                                    monkeypatch, caplog, stores_to_close):
    creds = tmp_path / "own.json"
    creds.write_text(json.dumps({"accessKeyID": own_s3.access_key, "secretAccessKey": own_s3.secret_key,
                                 "region": own_s3.region}))
    monkeypatch.setenv("SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
    sec_bucket = own_s3.create_bucket(unique_name("sec"))
    primary = open_store(s3_config(s3_server, s3_bucket))
    secondary = open_store(s3_config(own_s3, sec_bucket, env_prefix="SECONDARY_"))
    stores_to_close.extend([primary, secondary])
    # The store retries each part 5 times with waits up to 16s; keep the test short.
    secondary.resolve().part_retry = Policy(attempts=STORE_PART.attempts, first_wait=0.05, multiplier=1.0)
    seed(primary, n_deltas=2)
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def write(first: int, text: str) -> Snapshot:
        snap = new_snapshot(Kind.INCR, first, first + 9, prefix=primary.prefix, compression_suffix=".gz")
        await asyncio.to_thread(primary.save, snap, io.BytesIO(text.encode()))   # the primary keeps working
        return snap

    async def scenario():
        # Phase 1: a copier that does not know yet that the secondary went away: the event-driven
        # copy of a new snapshot fails after its retries and says so.
        copier = BackupCopier(primary, secondary, sync_config(max_retries=1))
        await copier.start()
        await wait_for(lambda: copier.status()["runs"] == 1)
        assert copier.status()["lastRun"]["succeeded"] and copier.status()["lastRun"]["copied"] == 3
        await asyncio.to_thread(own_s3.stop)
        during = await write(201, "written during the outage")
        copier.notify(during)
        await wait_for(lambda: any(m.startswith(f"Failed to copy snapshot {during.snap_name}: ")
                                   for m in messages(caplog, logging.ERROR)), timeout=60)
        await copier.stop(5)

        # Phase 2: the periodic loop (0.3s period) through several periods of the outage.
        copier = BackupCopier(primary, secondary, sync_config(max_retries=1, period=timedelta(seconds=0.3)))
        await copier.start()
        try:
            for i in range(3):
                runs = copier.status()["runs"]
                await wait_for(lambda runs=runs: copier.status()["runs"] > runs, interval=0.05)
                copier.notify(await write(211 + i * 10, f"outage {i}"))  # known down: left to the runs
            await wait_for(lambda: copier.status()["runs"] >= 4, interval=0.05)
            outage_status = copier.status()
            await asyncio.to_thread(own_s3.start)

            def caught_up() -> bool:
                # A just-restarted S3 server answers 500 until its volumes are loaded: not yet.
                try:
                    return digest_map(secondary) == digest_map(primary)
                except StoreUnavailable:
                    return False

            await wait_for(caught_up, timeout=60)
            await wait_for(lambda: copier.status()["lastRun"]["succeeded"] and copier.status()["pending"] == 0)
            return outage_status, copier.status()
        finally:
            await copier.stop(5)

    outage_status, final_status = asyncio.run(scenario())
    assert outage_status["secondary"]["available"] is False and outage_status["primary"]["available"] is True
    assert outage_status["primary"]["snapshots"] >= 5
    assert outage_status["lastSuccessfulSync"] is None and outage_status["pending"] >= 3
    assert outage_status["lastRun"]["errors"][0].startswith(f"cannot list the secondary snapstore S3/{sec_bucket}")
    # The primary kept working throughout: 3 seeded + 4 written during the outage, all now copied.
    assert len(primary.list()) == 7
    assert digest_map(secondary) == digest_map(primary)
    assert final_status["secondary"]["available"] is True and final_status["lastSuccessfulSync"]
    errors = messages(caplog, logging.ERROR)
    # Phase 1's copy failed, and its stop() gave it one more try (a drain tries what is pending)
    # before naming it as left behind for the next start.
    assert sum(m.startswith("Failed to copy snapshot") for m in errors) == 2, errors
    warnings = messages(caplog, logging.WARNING)
    assert "snapshot left behind on the primary at shutdown; the next start copies it" in warnings
    # Each copier said once, at its first failure, that the secondary was down; the second one
    # said when it was back and how many copies the catch-up took.
    assert warnings.count("Secondary snapstore unavailable") == 2, warnings
    recovered = [m for m in messages(caplog, logging.INFO) if m.startswith("Secondary snapstore available again")]
    assert len(recovered) == 1 and recovered[0].endswith("; 4 snapshots copied to catch up"), recovered
    assert errors.count("Sync run failed: could not list the secondary snapstore; nothing copied or deleted") >= 4
    assert metrics.REGISTRY.get_sample_value("etcdbr_snapstore_available", {"endpoint": "secondary"}) == 1


# -- cancelled in the middle of a large copy ----------------------------------------------------
class Metered:
    """Counts the bytes a copy has read from the primary and slows it after ``slow_after`` bytes,
    so that the test can stop the copier while the upload to the secondary is in progress."""

    def __init__(self, raw, progress: list, slow_after: int) -> None:
        self.raw, self.progress, self.slow_after = raw, progress, slow_after

    def read(self, n=-1):
        data = self.raw.read(n)
        if self.progress[0] > self.slow_after:
            time.sleep(0.25 * len(data) / MiB)   # 4 MiB/s: the rest takes ~5 s
        self.progress[0] += len(data)
        return data

    def close(self):
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("kind", ["GCS", "S3"])
def test_stop_during_large_copy_leaves_no_partial_object(kind, request, s3_server, s3_bucket, s3_creds, tmp_path,
                                                         monkeypatch, stores_to_close):
    primary = open_store(s3_config(s3_server, s3_bucket))
    if kind == "GCS":
        gcs_env, gcs_bucket = request.getfixturevalue("gcs_env"), request.getfixturevalue("gcs_bucket")
        secondary = open_store(gcs_config(gcs_env, gcs_bucket))
    else:   # another S3 server: no server-side copy, the bytes stream through a multipart upload
        own_s3 = request.getfixturevalue("own_s3")
        creds = tmp_path / "own.json"
        creds.write_text(json.dumps({"accessKeyID": own_s3.access_key, "secretAccessKey": own_s3.secret_key,
                                     "region": own_s3.region}))
        monkeypatch.setenv("SECONDARY_AWS_APPLICATION_CREDENTIALS_JSON", str(creds))
        secondary = open_store(s3_config(own_s3, own_s3.create_bucket(unique_name("sec")), env_prefix="SECONDARY_"))
    stores_to_close.extend([primary, secondary])
    big = new_snapshot(Kind.FULL, 0, 1000, prefix=primary.prefix, compression_suffix=".gz", created_on=T0)
    primary.save(big, io.BytesIO(os.urandom(30 * MiB)))
    progress = [0]
    real_fetch = primary.fetch
    primary.fetch = lambda snap: Metered(real_fetch(snap), progress, slow_after=11 * MiB)

    async def scenario():
        copier = BackupCopier(primary, secondary, sync_config())
        await copier.start()
        await wait_for(lambda: progress[0] > 12 * MiB, timeout=60, interval=0.02)
        t = time.monotonic()
        await copier.stop(1)   # the drain's grace is far shorter than what is left of the copy
        return time.monotonic() - t, copier.status()

    took, status = asyncio.run(scenario())
    assert progress[0] < 30 * MiB, "the copy finished before it could be cancelled"
    assert 1 <= took < 5
    assert status["lastRun"]["succeeded"] is False and status["lastRun"]["copied"] == 0
    deadline = time.monotonic() + 10
    while True:   # the abort runs in the copy's thread just after stop() returns
        listed = secondary.list(include_all=True)
        if kind == "GCS":
            leftovers = [b.name for b in gcs_env.client().list_blobs(gcs_bucket)]
        else:
            leftovers = [u["Key"] for u in secondary.client.list_multipart_uploads(
                Bucket=secondary.bucket).get("Uploads", []) or []]
            leftovers += [o["Key"] for o in secondary.client.list_objects_v2(
                Bucket=secondary.bucket).get("Contents", []) or []]
        if (not listed and not leftovers) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert listed == [] and leftovers == []
