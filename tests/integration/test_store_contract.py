"""The snapstore contract, run against every provider on a real server.

Each store is built the way an operator builds it: ``open_store(StoreConfig(...))`` with the
credentials in the environment variables the Go tool reads (a credentials JSON file for S3 and
ABS, ``STORAGE_EMULATOR_HOST`` for GCS) and ``--store-endpoint-override``. Objects the tool did
not write itself (legacy v1 keys, strays, bulk data for pagination) are put with the provider's
own client, and "nothing staged" is checked with it too.

Run one provider with ``-k Local``, ``-k S3``, ``-k GCS`` or ``-k ABS``.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import botocore.exceptions
import psutil
import pytest

from etcdbr.config import StoreConfig
from etcdbr.errors import ConfigError, ImmutableObject, ObjectNotFound, PermissionDenied, StoreError, StoreUnavailable
from etcdbr.snapshot import Kind, Snapshot, new_snapshot
from etcdbr.snapstore import open_store
from services import free_port, unique_name

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
CHUNK = 5 * MiB
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


# ---------------------------------------------------------------- providers under test


class Backend:
    """One provider: how an operator points the tool at it, and a native view of its container."""

    name = ""
    remote = True

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.stores = []
        self.container = self.new_container()

    # -- the tool's view
    def store(self, prefix: str = "etcd/main", *, container: str | None = None, endpoint: str | None = None,
              parallel: int = 3):
        config = StoreConfig(
            provider=self.name,
            container=self.container if container is None else container,
            prefix=prefix,
            endpoint_override=self.endpoint if endpoint is None else endpoint,
            min_chunk_size=CHUNK,
            max_parallel_chunk_uploads=parallel,
            temp_dir=str(self.tmp_path),
        )
        store = open_store(config)
        self.stores.append(store)
        return store

    def close(self) -> None:
        for store in self.stores:
            store.close()

    endpoint = ""

    # -- to be provided per provider
    def new_container(self) -> str:
        raise NotImplementedError

    def put_raw(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def raw_keys(self) -> list[str]:
        """Every committed object in the container."""
        raise NotImplementedError

    def staged(self) -> list[str]:
        """Leftovers of uploads that never completed (multipart uploads, uncommitted blocks, temp files)."""
        return []

    def dead_endpoint(self) -> str:
        raise NotImplementedError

    def use_wrong_credentials(self) -> None:
        raise NotImplementedError


class LocalBackend(Backend):
    name = "Local"
    remote = False

    def __init__(self, tmp_path, monkeypatch, home: Path) -> None:
        self.home = home
        super().__init__(tmp_path, monkeypatch)

    def new_container(self) -> str:
        return unique_name("local")

    @property
    def root(self) -> Path:
        return self.home / self.container

    def put_raw(self, key, data):
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def raw_keys(self):
        if not self.root.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*")
                      if p.is_file() and not p.relative_to(self.root).as_posix().startswith(".etcdbr-staging"))

    def staged(self):
        staging = self.root / ".etcdbr-staging"
        return sorted(str(p) for p in staging.rglob("*")) if staging.exists() else []


class S3Backend(Backend):
    name = "S3"

    def __init__(self, tmp_path, monkeypatch, server) -> None:
        self.server = server
        self.client = server.client()
        self.endpoint = server.endpoint
        self.creds_path = tmp_path / "aws-credentials.json"
        self.write_credentials(server.secret_key)
        monkeypatch.delenv("AWS_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS_JSON", str(self.creds_path))
        super().__init__(tmp_path, monkeypatch)

    def write_credentials(self, secret: str) -> None:
        self.creds_path.write_text(json.dumps({
            "accessKeyID": self.server.access_key,
            "secretAccessKey": secret,
            "region": self.server.region,
        }))

    def new_container(self, **kwargs) -> str:
        return self.server.create_bucket(unique_name("s3"), **kwargs)

    def put_raw(self, key, data):
        self.client.put_object(Bucket=self.container, Key=key, Body=data)

    def raw_keys(self):
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.container)
        return sorted(o["Key"] for p in pages for o in p.get("Contents", []) or [])

    def staged(self):
        uploads = self.client.list_multipart_uploads(Bucket=self.container).get("Uploads", []) or []
        return sorted(u["Key"] for u in uploads)

    def dead_endpoint(self):
        return f"http://127.0.0.1:{free_port()}"

    def use_wrong_credentials(self):
        self.write_credentials(self.server.secret_key + "-wrong")


class GCSBackend(Backend):
    name = "GCS"

    def __init__(self, tmp_path, monkeypatch, server) -> None:
        self.server = server
        self.client = server.client()
        self.endpoint = server.endpoint
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
        super().__init__(tmp_path, monkeypatch)

    def new_container(self) -> str:
        return self.server.create_bucket(unique_name("gcs"))

    def put_raw(self, key, data):
        self.client.bucket(self.container).blob(key).upload_from_string(data)

    def raw_keys(self):
        return sorted(b.name for b in self.client.list_blobs(self.container))

    def dead_endpoint(self):
        dead = f"http://127.0.0.1:{free_port()}"
        self.monkeypatch.setenv("STORAGE_EMULATOR_HOST", dead)
        return dead


class ABSBackend(Backend):
    name = "ABS"

    def __init__(self, tmp_path, monkeypatch, server) -> None:
        self.server = server
        self.service = server.client()
        self.endpoint = server.endpoint
        self.creds_path = tmp_path / "azure-credentials.json"
        self.write_credentials(server.key)
        monkeypatch.delenv("AZURE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(self.creds_path))
        super().__init__(tmp_path, monkeypatch)

    def write_credentials(self, key: str) -> None:
        self.creds_path.write_text(json.dumps({"storageAccount": self.server.account, "storageKey": key}))

    def new_container(self) -> str:
        return self.server.create_container(unique_name("abs"))

    def put_raw(self, key, data):
        self.service.get_container_client(self.container).upload_blob(key, data, overwrite=True)

    def raw_keys(self):
        return sorted(b.name for b in self.service.get_container_client(self.container).list_blobs())

    def staged(self):
        container = self.service.get_container_client(self.container)
        committed = set(self.raw_keys())
        return sorted(b.name for b in container.list_blobs(include=["uncommittedblobs"]) if b.name not in committed)

    def dead_endpoint(self):
        return f"http://127.0.0.1:{free_port()}/{self.server.account}"

    def use_wrong_credentials(self):
        import base64

        self.write_credentials(base64.b64encode(b"not-the-key-" * 5).decode())


def _make_backend(name: str, request, tmp_path, monkeypatch) -> Backend:
    # Servers are requested lazily so that `-k Local` starts none of them.
    if name == "Local":
        return LocalBackend(tmp_path, monkeypatch, request.getfixturevalue("tmp_home"))
    if name == "S3":
        return S3Backend(tmp_path, monkeypatch, request.getfixturevalue("s3_server"))
    if name == "GCS":
        return GCSBackend(tmp_path, monkeypatch, request.getfixturevalue("gcs_server"))
    return ABSBackend(tmp_path, monkeypatch, request.getfixturevalue("azurite_server"))


@pytest.fixture(params=["Local", "S3", "GCS", "ABS"])
def backend(request, tmp_path, monkeypatch):
    b = _make_backend(request.param, request, tmp_path, monkeypatch)
    yield b
    b.close()


@pytest.fixture(params=["S3", "GCS", "ABS"])
def remote(request, tmp_path, monkeypatch):
    b = _make_backend(request.param, request, tmp_path, monkeypatch)
    yield b
    b.close()


# ---------------------------------------------------------------- helpers


def snap(store, kind: Kind, start: int, last: int, *, minutes: int = 0, suffix: str = "", final: bool = False):
    return new_snapshot(kind, start, last, prefix=store.prefix, compression_suffix=suffix, is_final=final,
                        created_on=T0 + timedelta(minutes=minutes))


def read_all(store, s: Snapshot) -> bytes:
    stream = store.fetch(s)
    try:
        return stream.read()
    finally:
        stream.close()


class GeneratedStream:
    """``size`` bytes made on demand (never held whole), hashed as they are handed out.

    ``fail_after`` raises once that many bytes were produced, like a source dying mid-snapshot.
    """

    def __init__(self, size: int, fail_after: int | None = None) -> None:
        self.size = size
        self.fail_after = fail_after
        self.pos = 0
        self.sha = hashlib.sha256()
        self._block = os.urandom(MiB)

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise SourceDied(f"source died at byte {self.pos}")
        if n is None or n < 0:
            n = self.size - self.pos
        n = min(n, self.size - self.pos)
        if self.fail_after is not None:
            n = min(n, self.fail_after - self.pos)
        out = bytearray()
        pos, end = self.pos, self.pos + n
        while pos < end:
            number, offset = divmod(pos, MiB)
            take = min(end - pos, MiB - offset)
            # Every MiB differs, so a part sent twice or out of order changes the hash.
            out += (number.to_bytes(8, "little") + self._block[8:])[offset:offset + take]
            pos += take
        self.pos = end
        data = bytes(out)
        self.sha.update(data)
        return data


class SourceDied(RuntimeError):
    pass


class PeakRSS:
    """Sample this process's RSS every 20 ms; ``increase`` is the peak above the starting value."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def increase(self) -> int:
        return self.peak - self.start


# ---------------------------------------------------------------- the contract


def test_save_fetch_list_delete_round_trip(backend):
    store = backend.store()
    store.check()
    assert store.list() == []
    full = snap(store, Kind.FULL, 0, 10, suffix=".gz")
    incr = snap(store, Kind.INCR, 11, 20, minutes=1, suffix=".gz")
    final = snap(store, Kind.FULL, 0, 20, minutes=2, final=True)
    # An orphan GCS-style chunk of a composite that was never completed.
    chunk = replace(snap(store, Kind.FULL, 0, 30, minutes=3), kind=Kind.CHUNK, is_chunk=True, chunk_name="0000000001")
    small = b"full snapshot bytes" * 100
    large = os.urandom(2 * CHUNK + 123)  # three parts: exercises the multipart path
    assert store.save(full, _bytes_stream(small)) == len(small)
    assert store.save(incr, _bytes_stream(large)) == len(large)
    assert store.save(final, _bytes_stream(b"")) == 0
    assert store.save(chunk, _bytes_stream(b"piece")) == 5

    listed = store.list()
    assert [s.key for s in listed] == [full.key, incr.key, final.key, chunk.key]
    by_key = {s.key: s for s in listed}
    assert by_key[full.key].size == len(small)
    assert by_key[incr.key].size == len(large)
    assert by_key[final.key].is_final and by_key[final.key].size == 0
    c = by_key[chunk.key]
    assert c.is_chunk and c.kind is Kind.CHUNK and c.last_revision == 30
    i = by_key[incr.key]
    assert (i.kind, i.start_revision, i.last_revision, i.created_on, i.compression_suffix) == (
        Kind.INCR, 11, 20, T0 + timedelta(minutes=1), ".gz")
    assert all(s.prefix == store.prefix and s.snap_dir == "" for s in listed)

    assert read_all(store, by_key[full.key]) == small
    assert read_all(store, by_key[incr.key]) == large
    assert read_all(store, by_key[final.key]) == b""
    # Fetching by a freshly built snapshot (no listing attributes) works too.
    assert read_all(store, incr) == large

    for s in listed:
        store.delete(s)
    assert store.list() == []
    assert backend.staged() == []


def test_overwrite_keeps_one_object(backend):
    store = backend.store()
    s = snap(store, Kind.FULL, 0, 5)
    store.save(s, _bytes_stream(b"first"))
    store.save(s, _bytes_stream(b"second"))
    [listed] = store.list()
    assert listed.key == s.key
    assert read_all(store, listed) in (b"first", b"second")


def test_prefixes_are_isolated_and_strays_ignored(backend):
    team = backend.store("team")
    team2 = backend.store("team2")  # a string prefix of the other must not leak into it
    a = snap(team, Kind.FULL, 0, 100)
    b = snap(team2, Kind.FULL, 0, 200)
    team.save(a, _bytes_stream(b"a"))
    team2.save(b, _bytes_stream(b"b"))
    backend.put_raw("team/README.txt", b"not ours")           # outside v1/v2: ignored silently
    backend.put_raw("team/other/blob", b"not ours")
    backend.put_raw("team/v2/garbage-name", b"stray")         # inside v2, not a name: skipped
    backend.put_raw("team/v2/Full-0000000x-00000001-1700000000", b"stray")
    backend.put_raw("team/v2/Incr-00000009-00000001-1700000000", b"stray")  # start > last

    assert [s.key for s in team.list()] == [a.key]
    assert [s.key for s in team2.list()] == [b.key]


def test_v1_legacy_keys_are_listed_fetched_and_deleted(backend):
    store = backend.store("legacy")
    old_full = "legacy/v1/Backup-1600000000/Full-00000000-00000100-1600000000"
    old_incr = "legacy/v1/Backup-1600000000/Incr-00000101-00000150-1600000060"
    backend.put_raw(old_full, b"v1 full")
    backend.put_raw(old_incr, b"v1 incr")
    new = snap(store, Kind.INCR, 151, 160)
    store.save(new, _bytes_stream(b"v2 incr"))

    listed = store.list()
    assert [s.key for s in listed] == [old_full, old_incr, new.key]
    v1 = listed[0]
    assert (v1.prefix, v1.snap_dir, v1.kind, v1.last_revision) == ("legacy/v1", "Backup-1600000000", Kind.FULL, 100)
    assert v1.size == len(b"v1 full")
    assert read_all(store, listed[1]) == b"v1 incr"

    store.delete(listed[0])
    store.delete(listed[1])
    assert [s.key for s in store.list()] == [new.key]
    assert not [k for k in backend.raw_keys() if "/v1/" in k]


def test_listing_pages_past_1000_objects(backend):
    store = backend.store("many")
    count = 1050
    keys = [f"many/v2/Incr-{i:08d}-{i:08d}-{1700000000 + i}" for i in range(1, count + 1)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: backend.put_raw(k, b"d"), keys))
    listed = store.list()
    assert len(listed) == count
    assert [s.key for s in listed] == keys  # sorted by revision, not by upload order
    assert all(s.size == 1 for s in listed)


def test_failed_upload_leaves_nothing(backend):
    store = backend.store("failing", parallel=2)
    s = snap(store, Kind.FULL, 0, 42)
    source = GeneratedStream(10 * CHUNK, fail_after=3 * CHUNK + 1000)
    with pytest.raises(SourceDied):
        store.save(s, source)
    assert source.pos > 2 * CHUNK  # the failure came after several parts were sent
    assert store.list() == []
    assert [k for k in backend.raw_keys() if k.startswith("failing/")] == []
    assert backend.staged() == []


def test_missing_object_is_object_not_found(backend):
    store = backend.store()
    ghost = snap(store, Kind.FULL, 0, 7)
    with pytest.raises(ObjectNotFound) as fetched:
        read_all(store, ghost)
    assert ghost.key in str(fetched.value) and store.display in str(fetched.value)
    with pytest.raises(ObjectNotFound):
        store.delete(ghost)
    # A deleted object is gone for good: the second delete is ObjectNotFound as well.
    store.save(ghost, _bytes_stream(b"x"))
    [listed] = store.list()
    store.delete(listed)
    with pytest.raises(ObjectNotFound):
        store.delete(listed)


def test_copy_from_same_provider(backend):
    src_store = backend.store("src")
    dst_store = backend.store("dst")
    s = snap(src_store, Kind.FULL, 0, 9, suffix=".gz")
    payload = os.urandom(CHUNK + 17)
    src_store.save(s, _bytes_stream(payload))
    [listed] = src_store.list()
    target = listed.with_prefix(dst_store.prefix)
    copied = dst_store.copy_from(src_store, listed, target)
    assert isinstance(copied, bool)
    if copied:
        [got] = dst_store.list()
        assert got.key == target.key and got.size == len(payload)
        assert read_all(dst_store, got) == payload
    else:
        assert dst_store.list() == []


# ---------------------------------------------------------------- failures of remote stores


def test_unreachable_endpoint_is_store_unavailable(remote):
    dead = remote.dead_endpoint()
    store = remote.store(endpoint=dead)
    started = time.monotonic()
    for call in (store.check, store.list):
        with pytest.raises(StoreUnavailable) as exc:
            call()
        message = str(exc.value)
        assert dead.split("//", 1)[1].split("/", 1)[0] in message, message  # host:port named
        assert store.display in message
    assert time.monotonic() - started < 60


def test_missing_container_gives_a_clear_error(remote):
    missing = unique_name("missing")
    store = remote.store(container=missing)
    with pytest.raises(StoreError) as exc:
        store.check()
    assert not isinstance(exc.value, (StoreUnavailable, ObjectNotFound))
    assert missing in str(exc.value)
    assert "not exist" in str(exc.value) or "not found" in str(exc.value).lower()


@pytest.mark.parametrize("name", ["S3", "ABS"])
def test_wrong_credentials_are_permission_denied(name, request, tmp_path, monkeypatch):
    # fake-gcs-server accepts any credentials, so GCS cannot be part of this case.
    b = _make_backend(name, request, tmp_path, monkeypatch)
    try:
        b.use_wrong_credentials()
        store = b.store()
        for call in (store.check, store.list, lambda: store.save(snap(store, Kind.FULL, 0, 1), _bytes_stream(b"x"))):
            with pytest.raises(PermissionDenied) as exc:
                call()
            assert store.display in str(exc.value)
            assert "-wrong" not in str(exc.value)
    finally:
        b.close()


# ---------------------------------------------------------------- large streamed uploads


@pytest.mark.timeout(600)
def test_large_streamed_upload_has_bounded_memory(backend, record_property):
    parallel = 6
    store = backend.store("big", parallel=parallel)
    s = snap(store, Kind.FULL, 0, 256)
    size = 256 * MiB
    source = GeneratedStream(size)
    with PeakRSS() as rss:
        tracemalloc.start()
        try:
            written = store.save(s, source)
            python_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert written == size
    # Python objects: the parts in flight, the one read ahead, and the source's buffer and result.
    python_bound = CHUNK * (parallel + 3) + 8 * MiB
    # Process memory adds allocator fragmentation across threads, sockets and TLS buffers.
    rss_bound = CHUNK * (parallel + 2) + 40 * MiB
    record_property("rss_increase_mib", round(rss.increase / MiB, 1))
    record_property("python_peak_mib", round(python_peak / MiB, 1))
    print(f"{backend.name}: 256 MiB upload, {parallel} parts in parallel: RSS +{rss.increase / MiB:.1f} MiB "
          f"(bound {rss_bound / MiB:.0f}), Python peak {python_peak / MiB:.1f} MiB (bound {python_bound / MiB:.0f})")
    assert python_peak < python_bound, f"Python allocations peaked at {python_peak / MiB:.1f} MiB"
    assert rss.increase < rss_bound, f"RSS grew by {rss.increase / MiB:.1f} MiB"

    [listed] = store.list()
    assert listed.size == size
    digest = hashlib.sha256()
    stream = store.fetch(listed)
    try:
        while block := stream.read(4 * MiB):
            digest.update(block)
    finally:
        stream.close()
    assert digest.hexdigest() == source.sha.hexdigest()


# ---------------------------------------------------------------- S3 specifics


@pytest.fixture
def s3(request, tmp_path, monkeypatch):
    b = _make_backend("S3", request, tmp_path, monkeypatch)
    yield b
    b.close()


def test_s3_object_lock_refuses_delete(s3):
    # SeaweedFS implements Object Lock (versioning, default retention, AccessDenied on delete).
    bucket = s3.new_container(object_lock=True)
    s3.client.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
        "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 2}}})
    store = s3.store(container=bucket)
    s = snap(store, Kind.FULL, 0, 11)
    before = datetime.now(timezone.utc)
    store.save(s, _bytes_stream(b"locked"))
    [listed] = store.list()
    assert listed.version_id
    assert listed.immutable_until is not None
    assert before + timedelta(days=2) - timedelta(minutes=5) <= listed.immutable_until
    assert listed.immutable_until <= datetime.now(timezone.utc) + timedelta(days=2, minutes=5)
    assert not listed.is_deletable()
    assert listed.is_deletable(listed.immutable_until + timedelta(seconds=1))
    with pytest.raises(ImmutableObject) as exc:
        store.delete(listed)
    assert s.key in str(exc.value)
    assert [x.key for x in store.list()] == [s.key]
    assert read_all(store, listed) == b"locked"


def test_s3_versioned_bucket_lists_and_deletes_by_version(s3):
    bucket = s3.new_container(versioning=True)
    store = s3.store(container=bucket)
    s = snap(store, Kind.FULL, 0, 12)
    store.save(s, _bytes_stream(b"v"))
    [listed] = store.list()
    assert listed.version_id and listed.immutable_until is None and listed.size == 1
    store.delete(listed)
    assert store.list() == []
    versions = s3.client.list_object_versions(Bucket=bucket).get("Versions", [])
    assert versions == []


def test_s3_denied_delete_without_lock_is_permission_denied_not_immutable(s3, monkeypatch):
    # A 403 on delete only means "immutable" when the object really is locked.
    store = s3.store()
    s = snap(store, Kind.FULL, 0, 13)
    store.save(s, _bytes_stream(b"x"))
    [listed] = store.list()
    s3.use_wrong_credentials()
    denied = s3.store()
    with pytest.raises(PermissionDenied) as exc:
        denied.delete(listed)
    assert not isinstance(exc.value, ImmutableObject)


def test_s3_server_side_copy_between_buckets(s3, monkeypatch):
    import etcdbr.snapstore.s3 as s3mod

    src = s3.store("src")
    dst = s3.store("dst", container=s3.new_container())
    small = snap(src, Kind.FULL, 0, 20)
    big = snap(src, Kind.INCR, 21, 40)
    src.save(small, _bytes_stream(b"small"))
    payload = os.urandom(2 * CHUNK + 5)
    src.save(big, _bytes_stream(payload))
    listed = src.list()
    assert dst.copy_from(src, listed[0], listed[0].with_prefix(dst.prefix)) is True
    # Force the UploadPartCopy path (used above 5 GiB) on a small object.
    monkeypatch.setattr(s3mod, "MAX_SINGLE_COPY", MiB)
    monkeypatch.setattr(s3mod, "COPY_PART_SIZE", CHUNK)
    assert dst.copy_from(src, listed[1], listed[1].with_prefix(dst.prefix)) is True
    copies = dst.list()
    assert [c.key for c in copies] == ["dst/v2/" + small.snap_name, "dst/v2/" + big.snap_name]
    assert read_all(dst, copies[0]) == b"small"
    assert read_all(dst, copies[1]) == payload
    assert s3.client.list_multipart_uploads(Bucket=dst.bucket).get("Uploads", []) in ([], None)

    # Another service (here: another endpoint spelling) is never copied server-side.
    other = s3.store("other", endpoint=s3.endpoint.replace("127.0.0.1", "localhost"))
    assert other.copy_from(src, listed[0], listed[0].with_prefix(other.prefix)) is False


def test_s3_bucket_from_credentials_and_deprecated_endpoint(s3, tmp_path, monkeypatch):
    creds = json.loads(s3.creds_path.read_text())
    creds.update(bucketName=s3.container, endpoint=s3.endpoint)
    s3.creds_path.write_text(json.dumps(creds))
    store = s3.store(container="", endpoint="")
    assert store.display == f"S3/{s3.container}"
    store.save(snap(store, Kind.FULL, 0, 1), _bytes_stream(b"x"))
    assert len(store.list()) == 1
    # The flag wins over the deprecated `endpoint` key.
    dead = s3.dead_endpoint()
    with pytest.raises(StoreUnavailable):
        s3.store(container="", endpoint=dead).list()


def test_s3_credentials_directory_layout(s3, tmp_path, monkeypatch):
    creds_dir = tmp_path / "aws-secret"
    creds_dir.mkdir()
    (creds_dir / "accessKeyID").write_text(s3.server.access_key)
    (creds_dir / "secretAccessKey").write_text(s3.server.secret_key + "\n")
    (creds_dir / "region").write_text(s3.server.region)
    (creds_dir / "s3ForcePathStyle").write_text("true")
    monkeypatch.delenv("AWS_APPLICATION_CREDENTIALS_JSON")
    monkeypatch.setenv("AWS_APPLICATION_CREDENTIALS", str(creds_dir))
    store = s3.store()
    store.check()
    store.save(snap(store, Kind.FULL, 0, 2), _bytes_stream(b"y"))
    assert len(store.list()) == 1


# ---------------------------------------------------------------- capabilities the emulators lack


def test_gcs_emulator_lacks_retention_and_holds(gcs_server):
    """fake-gcs-server ignores bucket retention and object holds, so GCS immutability cannot be
    tested against it. When this starts failing the emulator gained the feature: add a real
    ImmutableObject case for GCS to this suite."""
    client = gcs_server.client()
    bucket = client.bucket(gcs_server.create_bucket(unique_name("gcs")))
    bucket.retention_period = 3600
    bucket.patch()
    blob = bucket.blob("held")
    blob.upload_from_string(b"x")
    blob.temporary_hold = True
    blob.patch()
    blob.delete()  # a real GCS refuses this (retention and temporary hold)
    assert bucket.get_blob("held") is None


def test_azurite_lacks_immutability(azurite_server):
    """Azurite answers 501 to immutability policies and legal holds, so ABS immutability cannot be
    tested against it. When this starts failing Azurite gained the feature: add a real
    ImmutableObject case for ABS to this suite."""
    from azure.core.exceptions import HttpResponseError

    service = azurite_server.client()
    container = service.get_container_client(azurite_server.create_container(unique_name("abs")))
    blob = container.upload_blob("held", b"x")
    with pytest.raises(HttpResponseError) as exc:
        blob.set_legal_hold(True)
    assert exc.value.status_code == 501


def _bytes_stream(data: bytes):
    import io

    return io.BytesIO(data)


def test_s3_sse_c_round_trip(s3):
    key = "0123456789abcdef0123456789abcdef"
    creds = json.loads(s3.creds_path.read_text())
    creds.update(sseCustomerKey=key, sseCustomerAlgorithm="AES256")
    s3.creds_path.write_text(json.dumps(creds))
    store = s3.store("sse")
    s = snap(store, Kind.FULL, 0, 3)
    payload = os.urandom(CHUNK + 10)
    store.save(s, _bytes_stream(payload))
    small = snap(store, Kind.INCR, 4, 5)
    store.save(small, _bytes_stream(b"small"))
    listed = store.list()
    assert read_all(store, listed[0]) == payload
    assert read_all(store, listed[1]) == b"small"
    # Without the key the server refuses to hand the bytes out.
    with pytest.raises(botocore.exceptions.ClientError):
        s3.client.get_object(Bucket=s3.container, Key=s.key)["Body"].read()
    dst = s3.store("sse-copy", container=s3.new_container())
    assert dst.copy_from(store, listed[1], listed[1].with_prefix(dst.prefix)) is True
    assert read_all(dst, dst.list()[0]) == b"small"
    # An object written before the key was configured is still listed and deletable.
    backend_plain = snap(store, Kind.INCR, 6, 7)
    s3.put_raw(backend_plain.key, b"plain")
    listed = store.list()
    assert len(listed) == 3
    assert read_all(store, listed[2]) == b"plain"
    for x in listed:
        store.delete(x)
    assert store.list() == []


def test_s3_credential_options_are_honoured(s3):
    pem = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"
    creds = json.loads(s3.creds_path.read_text())
    creds.update(trustedCaCert=pem, requestChecksumCalculation="when_required",
                 responseChecksumValidation="when_required")
    s3.creds_path.write_text(json.dumps(creds))
    store = s3.store()
    ca = Path(store._ca_dir) / "ca.pem"
    assert ca.read_text() == pem
    assert ca.stat().st_mode & 0o777 == 0o600 and ca.parent.stat().st_mode & 0o777 == 0o700
    # Plain HTTP endpoint: the CA is not used, but the checksum modes must be accepted by the server.
    store.save(snap(store, Kind.FULL, 0, 4), _bytes_stream(os.urandom(CHUNK + 1)))
    assert len(store.list()) == 1
    store.close()
    assert not ca.parent.exists()

    creds.update(requestChecksumCalculation="sometimes")
    s3.creds_path.write_text(json.dumps(creds))
    with pytest.raises(ConfigError, match="requestChecksumCalculation"):
        s3.store()


def test_s3_credentials_without_keys_need_a_web_identity(s3, tmp_path, monkeypatch):
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    s3.creds_path.write_text(json.dumps({"region": "eu-west-1"}))
    with pytest.raises(ConfigError, match="accessKeyID"):
        s3.store()
    token = tmp_path / "token"
    token.write_text("eyJ.fake.token")
    s3.creds_path.write_text(json.dumps({"roleARN": "arn:aws:iam::123456789012:role/etcd", "tokenPath": str(token)}))
    store = s3.store()  # credentials are fetched lazily, on the first request
    assert store.region == "us-east-1"


def test_s3_versioned_delete_markers_and_exclusion_tag(s3):
    """A key whose latest version is a delete marker is still a snapshot (its data is there)
    unless it was tagged ``x-etcd-snapshot-exclude=true``; GC (include_all) sees both."""
    bucket = s3.new_container(versioning=True)
    store = s3.store(container=bucket)
    kept, hidden = snap(store, Kind.FULL, 0, 30), snap(store, Kind.INCR, 31, 40)
    store.save(kept, _bytes_stream(b"k"))
    store.save(hidden, _bytes_stream(b"h"))
    s3.client.put_object_tagging(Bucket=bucket, Key=hidden.key, Tagging={
        "TagSet": [{"Key": "x-etcd-snapshot-exclude", "Value": "true"}]})
    for key in (kept.key, hidden.key):
        s3.client.delete_object(Bucket=bucket, Key=key)  # no version: leaves a delete marker
    assert [x.key for x in store.list()] == [kept.key]
    assert [x.key for x in store.list(include_all=True)] == [kept.key, hidden.key]


def test_s3_rotated_credentials_are_picked_up(s3):
    store = s3.store()
    s = snap(store, Kind.FULL, 0, 50)
    store.save(s, _bytes_stream(b"before"))
    s3.use_wrong_credentials()
    with pytest.raises(PermissionDenied):
        store.list()
    s3.write_credentials(s3.server.secret_key)
    os.utime(s3.creds_path, ns=(time.time_ns() + 10**9,) * 2)  # a new mtime even on coarse clocks
    assert [x.key for x in store.list()] == [s.key]


def test_s3_check_aborts_abandoned_multipart_uploads_only(request, tmp_path, monkeypatch):
    """A process killed mid-upload leaves a multipart upload behind; the next check() aborts it
    once it is old enough, and leaves younger uploads (another process's live one) alone."""
    from etcdbr.snapstore import s3 as s3_module

    b = _make_backend("S3", request, tmp_path, monkeypatch)
    store = b.store()
    key = f"{store.prefix}/Full-00000000-00000010-1700000000.gz"
    upload = b.client.create_multipart_upload(Bucket=b.container, Key=key)["UploadId"]
    outside = b.client.create_multipart_upload(Bucket=b.container, Key="not-ours/file")["UploadId"]
    stray = b.client.create_multipart_upload(Bucket=b.container, Key=f"{store.prefix}/notes.txt")["UploadId"]
    try:
        store.check()
        assert b.staged() == sorted([key, "not-ours/file", f"{store.prefix}/notes.txt"])  # young: kept
        monkeypatch.setattr(s3_module, "STALE_UPLOAD", s3_module.timedelta(0))
        store.check()
        # Ours aborted; another prefix and a key that is no snapshot are not ours to touch.
        assert b.staged() == sorted(["not-ours/file", f"{store.prefix}/notes.txt"])
    finally:
        b.client.abort_multipart_upload(Bucket=b.container, Key="not-ours/file", UploadId=outside)
        b.client.abort_multipart_upload(Bucket=b.container, Key=f"{store.prefix}/notes.txt", UploadId=stray)
        try:
            b.client.abort_multipart_upload(Bucket=b.container, Key=key, UploadId=upload)
        except botocore.exceptions.ClientError:  # already aborted by the sweep under test
            pass
