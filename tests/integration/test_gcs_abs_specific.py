"""GCS and ABS behaviour beyond the shared store contract, against fake-gcs-server and Azurite.

Covered here: the GCS compose path (more than 32 components, folded while uploading), what a
failed upload leaves (nothing, staging included, and never a damaged older object), exclusion
markers, what the emulators support of retention and holds (asserted explicitly, with the error
mapping checked on the services' real error shapes where the emulators cannot produce them),
server-side copies, credentials in the Go tool's layouts with ``SECONDARY_`` prefixes, and that no
secret reaches the log records.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from etcdbr import logs
from etcdbr.config import StoreConfig
from etcdbr.errors import ConfigError, ImmutableObject, ObjectNotFound, PermissionDenied, StoreUnavailable
from etcdbr.snapshot import Kind, new_snapshot
from etcdbr.snapstore import open_store
from services import unique_name

pytestmark = pytest.mark.integration

KiB = 1024
PART = 64 * KiB  # GCS components and ABS blocks may be of any size, so tests use small parts

_ENV = (
    "GOOGLE_APPLICATION_CREDENTIALS", "STORAGE_EMULATOR_HOST",
    "AZURE_APPLICATION_CREDENTIALS", "AZURE_APPLICATION_CREDENTIALS_JSON",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in _ENV:
        for prefix in ("", "SECONDARY_", "SOURCE_"):
            monkeypatch.delenv(prefix + name, raising=False)


class Source:
    """A stream of unknown length made on demand; fails once ``fail_after`` bytes were handed out."""

    def __init__(self, size: int, fail_after: int | None = None, seed: int = 1) -> None:
        self.size, self.fail_after, self.pos = size, fail_after, 0
        self.sha = hashlib.sha256()
        self._block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB

    def read(self, n: int = -1) -> bytes:
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise SourceDied(f"source died at byte {self.pos}")
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if self.fail_after is not None:
            end = min(end, self.fail_after)
        out = bytearray()
        while self.pos + len(out) < end:
            pos = self.pos + len(out)
            number, offset = divmod(pos, len(self._block))
            # Every block differs, so a component composed twice or out of order changes the hash.
            block = number.to_bytes(8, "little") + self._block[8:]
            out += block[offset:offset + end - pos]
        self.pos = end
        self.sha.update(out)
        return bytes(out)


class SourceDied(RuntimeError):
    pass


def digest(store, snap) -> str:
    h = hashlib.sha256()
    stream = store.fetch(snap)
    try:
        while block := stream.read(256 * KiB):
            h.update(block)
    finally:
        stream.close()
    return h.hexdigest()


def read_all(store, snap) -> bytes:
    stream = store.fetch(snap)
    try:
        return stream.read()
    finally:
        stream.close()


# ================================================================ GCS


@pytest.fixture
def gcs(gcs_server, gcs_bucket, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    opened = []

    def make(prefix="etcd", *, bucket=None, parallel=4, endpoint=None, env_prefix=""):
        store = open_store(StoreConfig(provider="GCS", container=bucket or gcs_bucket, prefix=prefix,
                                       endpoint_override=gcs_server.endpoint if endpoint is None else endpoint,
                                       min_chunk_size=PART, max_parallel_chunk_uploads=parallel,
                                       env_prefix=env_prefix))
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def gcs_keys(gcs_server, bucket) -> list[str]:
    return sorted(b.name for b in gcs_server.client().list_blobs(bucket))


def test_gcs_compose_folds_more_than_32_components(gcs, gcs_server, gcs_bucket, monkeypatch):
    store = gcs()
    composes = []
    real_compose = store._compose

    def spy(target, sources, key, **kwargs):
        composes.append((target, len(sources)))
        return real_compose(target, sources, key, **kwargs)

    monkeypatch.setattr(store, "_compose", spy)
    snap = new_snapshot(Kind.FULL, 0, 100, prefix=store.prefix, compression_suffix=".gz")
    parts = 100
    source = Source(parts * PART + 123)
    assert store.save(snap, source) == source.size

    # 101 components: folded 31 at a time into staging accumulators, never more than 32 sources.
    assert all(n <= 32 for _, n in composes)
    assert len(composes) >= 4
    assert all(".etcdbr-staging/" in target for target, _ in composes[:-1])
    assert composes[-1][0] == snap.key
    # Nothing but the snapshot is left: no components, no accumulators, no chunk objects.
    assert gcs_keys(gcs_server, gcs_bucket) == [snap.key]
    [listed] = store.list()
    assert listed.key == snap.key and listed.size == source.size and not listed.is_chunk
    assert digest(store, listed) == source.sha.hexdigest()


def test_gcs_exactly_32_components_and_small_objects(gcs, gcs_server, gcs_bucket):
    store = gcs()
    full = new_snapshot(Kind.FULL, 0, 10, prefix=store.prefix)
    source = Source(32 * PART)
    store.save(full, source)
    small = new_snapshot(Kind.INCR, 11, 12, prefix=store.prefix)
    store.save(small, io.BytesIO(b"tiny"))
    assert gcs_keys(gcs_server, gcs_bucket) == sorted([full.key, small.key])
    assert digest(store, full) == source.sha.hexdigest()
    assert read_all(store, small) == b"tiny"


def test_gcs_failed_upload_leaves_no_staging(gcs, gcs_server, gcs_bucket):
    store = gcs(parallel=2)
    snap = new_snapshot(Kind.FULL, 0, 42, prefix=store.prefix)
    source = Source(200 * PART, fail_after=70 * PART + 5)  # after two folds
    with pytest.raises(SourceDied):
        store.save(snap, source)
    assert gcs_keys(gcs_server, gcs_bucket) == []
    assert store.list(include_all=True) == []


def test_gcs_failed_final_compose_leaves_nothing_and_keeps_older_object(gcs, gcs_server, gcs_bucket, monkeypatch):
    store = gcs()
    snap = new_snapshot(Kind.FULL, 0, 43, prefix=store.prefix)
    store.save(snap, io.BytesIO(b"the good copy"))
    real_compose = store._compose

    def refuse_final(target, sources, key, **kwargs):
        if target == snap.key:
            raise PermissionDenied("compose refused", endpoint=store.display, key=key)
        return real_compose(target, sources, key, **kwargs)

    monkeypatch.setattr(store, "_compose", refuse_final)
    with pytest.raises(PermissionDenied):
        store.save(snap, Source(40 * PART))
    assert gcs_keys(gcs_server, gcs_bucket) == [snap.key]
    assert read_all(store, snap) == b"the good copy"


def test_gcs_check_sweeps_abandoned_staging_only(gcs, gcs_server, gcs_bucket, monkeypatch):
    import etcdbr.snapstore.gcs as gcsmod

    store = gcs("team")
    bucket = gcs_server.client().bucket(gcs_bucket)
    leftover = f"team/.etcdbr-staging/{'0' * 32}/0000000001"
    bucket.blob(leftover).upload_from_string(b"abandoned")
    kept = new_snapshot(Kind.FULL, 0, 5, prefix=store.prefix)
    store.save(kept, io.BytesIO(b"keep"))
    store.check()  # fresh staging belongs to a live upload: left alone
    assert leftover in gcs_keys(gcs_server, gcs_bucket)
    assert [s.key for s in store.list()] == [kept.key]  # staging never lists
    monkeypatch.setattr(gcsmod, "STALE_STAGING", timedelta(seconds=-60))
    store.check()
    assert gcs_keys(gcs_server, gcs_bucket) == [kept.key]


def test_gcs_exclude_metadata_hides_from_list_unless_include_all(gcs, gcs_server, gcs_bucket):
    store = gcs()
    a = new_snapshot(Kind.FULL, 0, 1, prefix=store.prefix)
    b = new_snapshot(Kind.INCR, 2, 3, prefix=store.prefix)
    store.save(a, io.BytesIO(b"a"))
    store.save(b, io.BytesIO(b"b"))
    blob = gcs_server.client().bucket(gcs_bucket).get_blob(b.key)
    blob.metadata = {"x-etcd-snapshot-exclude": "true"}
    blob.patch()
    assert [s.key for s in store.list()] == [a.key]
    assert [s.key for s in store.list(include_all=True)] == [a.key, b.key]


def test_gcs_emulator_has_no_retention_so_mapping_is_checked_on_real_shapes(gcs, gcs_server, gcs_bucket):
    from google.api_core import exceptions as api_exceptions
    from google.cloud.storage import Blob

    client = gcs_server.client()
    bucket = client.bucket(gcs_bucket)
    bucket.retention_period = 3600
    bucket.patch()
    blob = bucket.blob("etcd/v2/Full-00000000-00000001-1700000000")
    blob.upload_from_string(b"x")
    blob.temporary_hold = True
    blob.patch()
    # Capability check: fake-gcs-server keeps neither a retention policy nor holds.
    assert client.get_bucket(gcs_bucket).retention_period is None
    got = bucket.get_blob(blob.name)
    assert got.retention_expiration_time is None and not got.temporary_hold
    store = gcs()
    [listed] = store.list()
    assert listed.immutable_until is None and listed.is_deletable()

    # The listing and the delete mapping on GCS's real shapes.
    from etcdbr.snapstore.gcs import HELD_UNTIL, _immutable_until

    def blob_from(resource: dict) -> Blob:
        b = Blob("k", bucket)
        b._set_properties(resource)  # what the SDK does with each item of a listing
        return b

    expiry = "2031-02-03T04:05:06.000Z"
    retained = blob_from({"name": "k", "retentionExpirationTime": expiry})
    assert _immutable_until(retained) == datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    object_retained = blob_from({"name": "k", "retentionExpirationTime": expiry,
                                 "retention": {"mode": "Locked", "retainUntilTime": "2035-01-01T00:00:00Z"}})
    assert _immutable_until(object_retained) == datetime(2035, 1, 1, tzinfo=timezone.utc)
    assert _immutable_until(blob_from({"name": "k", "eventBasedHold": True})) == HELD_UNTIL
    assert _immutable_until(blob_from({"name": "k", "temporaryHold": True})) == HELD_UNTIL
    assert _immutable_until(blob_from({"name": "k"})) is None

    key = "etcd/v2/Full-00000000-00000001-1700000000"
    for message in (
        f"Object '{gcs_bucket}/{key}' is subject to bucket's retention policy or object retention and cannot be "
        "deleted or overwritten until 2031-02-03T04:05:06Z",
        f"Object '{gcs_bucket}/{key}' is under active Temporary hold and cannot be deleted, overwritten or "
        "archived until hold is removed.",
    ):
        mapped = store._error(api_exceptions.Forbidden(message), key)
        assert isinstance(mapped, ImmutableObject), message
        assert store.display in str(mapped) and key in str(mapped)
    denied = store._error(api_exceptions.Forbidden(
        "sa@p.iam.gserviceaccount.com does not have storage.objects.delete access to the Google Cloud Storage "
        "object. Permission 'storage.objects.delete' denied on resource (or it may not exist)."), key)
    assert type(denied) is PermissionDenied
    assert isinstance(store._error(api_exceptions.TooManyRequests("slow down"), key), StoreUnavailable)
    assert isinstance(store._error(api_exceptions.ServiceUnavailable("busy"), key), StoreUnavailable)


def test_gcs_server_side_copy(gcs, gcs_server, gcs_bucket, azurite_server, abs_container, abs_creds, monkeypatch):
    src = gcs("src")
    other_bucket = gcs_server.create_bucket(unique_name("gcs"))
    dst = gcs("dst", bucket=other_bucket)
    snap = new_snapshot(Kind.FULL, 0, 9, prefix=src.prefix, compression_suffix=".gz")
    source = Source(40 * PART)
    src.save(snap, source)
    [listed] = src.list()
    target = listed.with_prefix(dst.prefix)
    assert dst.copy_from(src, listed, target) is True
    [copied] = dst.list()
    assert copied.key == target.key and copied.size == source.size
    assert digest(dst, copied) == source.sha.hexdigest()
    assert gcs_keys(gcs_server, other_bucket) == [target.key]

    # Another endpoint spelling, or another provider, is never copied server-side.
    elsewhere = gcs("dst", bucket=other_bucket, endpoint=gcs_server.endpoint.replace("127.0.0.1", "localhost"))
    assert elsewhere.copy_from(src, listed, target) is False
    abs_store = _abs_store(azurite_server, abs_container)
    assert dst.copy_from(abs_store, listed, target) is False
    assert abs_store.copy_from(src, listed, target) is False

    ghost = new_snapshot(Kind.FULL, 0, 77, prefix=src.prefix)
    with pytest.raises(ObjectNotFound):
        dst.copy_from(src, ghost, ghost.with_prefix(dst.prefix))


def _service_account(tmp_path: Path, name: str, endpoint: str | None = None) -> tuple[Path, dict]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {
        "type": "service_account",
        "project_id": f"{name}-project",
        "private_key_id": hashlib.sha1(pem.encode()).hexdigest(),
        "private_key": pem,
        "client_email": f"{name}@{name}-project.iam.gserviceaccount.com",
        "client_id": "1234567890",
        # Never contacted: the tests below build clients without making requests.
        "token_uri": "http://127.0.0.1:9/token",
    }
    directory = tmp_path / name
    directory.mkdir()
    path = directory / "serviceaccount.json"
    path.write_text(json.dumps(info))
    if endpoint is not None:
        (directory / "storageAPIEndpoint").write_text(endpoint + "\n")
    return path, info


def test_gcs_service_account_file_and_endpoint_file(gcs_server, tmp_path, monkeypatch, caplog):
    from google.oauth2 import service_account

    caplog.set_level(logging.DEBUG)
    path, info = _service_account(tmp_path, "primary", endpoint=gcs_server.endpoint + "/storage/v1/")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    store = open_store(StoreConfig(provider="GCS", container="b1", prefix="p"))
    try:
        creds = store.client._credentials
        assert isinstance(creds, service_account.Credentials)
        assert creds.service_account_email == info["client_email"]
        # The Go SDK's endpoint form (with the JSON API path) is accepted.
        assert store.endpoint == gcs_server.endpoint
        assert store.service_identity == ("GCS", gcs_server.endpoint)
        assert str(path) in store.credentials.sources
        # The flag wins over the file.
        flagged = open_store(StoreConfig(provider="GCS", container="b1", endpoint_override="https://gcs.example.test"))
        assert flagged.endpoint == "https://gcs.example.test"
        flagged.close()
    finally:
        store.close()
    # The key is registered as a secret and is in no log record.
    assert logs.redact(info["private_key"]) == logs.MASK
    body = info["private_key"].splitlines()[1]
    assert body not in caplog.text and info["private_key_id"] not in caplog.text


def test_gcs_external_account_file(tmp_path, monkeypatch):
    from google.auth import identity_pool

    token = tmp_path / "token"
    token.write_text("subject-token")
    path = tmp_path / "external.json"
    path.write_text(json.dumps({
        "type": "external_account",
        "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "token_url": "http://127.0.0.1:9/token",
        "credential_source": {"file": str(token)},
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    store = open_store(StoreConfig(provider="GCS", container="b1", endpoint_override="https://gcs.example.test"))
    try:
        assert isinstance(store.client._credentials, identity_pool.Credentials)
    finally:
        store.close()


def test_gcs_broken_credentials_file_is_a_config_error(tmp_path, monkeypatch):
    path = tmp_path / "sa.json"
    path.write_text(json.dumps({"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\nsecretbits\n"}))
    monkeypatch.setenv("SECONDARY_GOOGLE_APPLICATION_CREDENTIALS", str(path))
    with pytest.raises(ConfigError) as exc:
        open_store(StoreConfig(provider="GCS", container="b1", env_prefix="SECONDARY_",
                               endpoint_override="https://gcs.example.test"))
    assert "SECONDARY_GOOGLE_APPLICATION_CREDENTIALS" in str(exc.value) and str(path) in str(exc.value)
    assert "secretbits" not in str(exc.value)


def test_gcs_secondary_prefixed_variables(gcs_server, gcs_bucket, tmp_path, monkeypatch):
    primary, _ = _service_account(tmp_path, "primary", endpoint="http://127.0.0.1:9")
    secondary, info = _service_account(tmp_path, "secondary", endpoint=gcs_server.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(primary))
    monkeypatch.setenv("SECONDARY_GOOGLE_APPLICATION_CREDENTIALS", str(secondary))
    store = open_store(StoreConfig(provider="GCS", container=gcs_bucket, env_prefix="SECONDARY_"))
    try:
        assert store.endpoint == gcs_server.endpoint
        assert store.client._credentials.service_account_email == info["client_email"]
    finally:
        store.close()

    # An emulator named for the secondary only (host:port, as the Go SDK takes it) serves it.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.delenv("SECONDARY_GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("SECONDARY_STORAGE_EMULATOR_HOST", gcs_server.endpoint.split("//", 1)[1])
    store = open_store(StoreConfig(provider="GCS", container=gcs_bucket, prefix="sec", env_prefix="SECONDARY_",
                                   min_chunk_size=PART))
    try:
        snap = new_snapshot(Kind.FULL, 0, 3, prefix=store.prefix)
        source = Source(3 * PART + 1)
        store.save(snap, source)
        assert [s.key for s in store.list()] == [snap.key]
        assert digest(store, snap) == source.sha.hexdigest()
    finally:
        store.close()


# ================================================================ ABS


def _write_abs_json(path: Path, account: str, key: str, **extra) -> Path:
    path.write_text(json.dumps({"storageAccount": account, "storageKey": key, **extra}))
    return path


def _abs_store(azurite_server, container, *, prefix="etcd", parallel=4, env_prefix="", endpoint=None):
    """An ABS store on Azurite with whatever credentials the environment holds."""
    return open_store(StoreConfig(provider="ABS", container=container, prefix=prefix,
                                  endpoint_override=azurite_server.endpoint if endpoint is None else endpoint,
                                  min_chunk_size=PART, max_parallel_chunk_uploads=parallel, env_prefix=env_prefix))


@pytest.fixture
def abs_creds(azurite_server, tmp_path, monkeypatch):
    path = _write_abs_json(tmp_path / "azure.json", azurite_server.account, azurite_server.key)
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(path))
    return path


@pytest.fixture
def absstore(azurite_server, abs_container, abs_creds):
    opened = []

    def make(prefix="etcd", **kwargs):
        kwargs.setdefault("container", abs_container)
        container = kwargs.pop("container")
        store = _abs_store(azurite_server, container, prefix=prefix, **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def abs_keys(azurite_server, container, *, uncommitted=False) -> list[str]:
    client = azurite_server.client().get_container_client(container)
    include = ["uncommittedblobs"] if uncommitted else None
    return sorted(b.name for b in client.list_blobs(include=include))


def test_abs_many_blocks_commit_only_ours(absstore, azurite_server, abs_container):
    store = absstore()
    snap = new_snapshot(Kind.FULL, 0, 50, prefix=store.prefix)
    source = Source(45 * PART + 9)
    assert store.save(snap, source) == source.size
    blob = azurite_server.client().get_container_client(abs_container).get_blob_client(snap.key)
    committed, uncommitted = blob.get_block_list("all")
    assert len(committed) == 46 and uncommitted == []
    ids = [base64.b64decode(b.id).decode() for b in committed]
    assert len({len(i) for i in ids}) == 1  # Azure wants one length per blob
    assert [i.rsplit("-", 1)[1] for i in ids] == [f"{n:010d}" for n in range(1, 47)]
    assert digest(store, snap) == source.sha.hexdigest()


def test_abs_failed_upload_discards_blocks_and_a_retry_is_clean(absstore, azurite_server, abs_container):
    store = absstore(parallel=2)
    snap = new_snapshot(Kind.FULL, 0, 51, prefix=store.prefix)
    with pytest.raises(SourceDied):
        store.save(snap, Source(30 * PART, fail_after=12 * PART + 1, seed=1))
    assert abs_keys(azurite_server, abs_container, uncommitted=True) == []
    assert store.list(include_all=True) == []

    source = Source(20 * PART + 3, seed=2)
    store.save(snap, source)
    assert digest(store, snap) == source.sha.hexdigest()
    assert abs_keys(azurite_server, abs_container, uncommitted=True) == [snap.key]


def test_abs_failed_overwrite_keeps_the_older_blob(absstore, azurite_server, abs_container):
    store = absstore(parallel=2)
    snap = new_snapshot(Kind.FULL, 0, 52, prefix=store.prefix)
    store.save(snap, io.BytesIO(b"the good copy"))
    with pytest.raises(SourceDied):
        store.save(snap, Source(30 * PART, fail_after=5 * PART + 1))
    assert read_all(store, snap) == b"the good copy"
    assert [s.key for s in store.list()] == [snap.key]


def test_abs_exclude_tag_hides_from_list_unless_include_all(absstore, azurite_server, abs_container):
    store = absstore()
    a = new_snapshot(Kind.FULL, 0, 1, prefix=store.prefix)
    b = new_snapshot(Kind.INCR, 2, 3, prefix=store.prefix)
    store.save(a, io.BytesIO(b"a"))
    store.save(b, io.BytesIO(b"b"))
    container = azurite_server.client().get_container_client(abs_container)
    container.get_blob_client(b.key).set_blob_tags({"x-etcd-snapshot-exclude": "true"})
    assert [s.key for s in store.list()] == [a.key]
    assert [s.key for s in store.list(include_all=True)] == [a.key, b.key]


def test_abs_azurite_has_no_worm_so_mapping_is_checked_on_real_shapes(absstore, azurite_server, abs_container):
    from azure.core.exceptions import HttpResponseError, ResourceExistsError
    from azure.storage.blob import BlobProperties, ImmutabilityPolicy

    store = absstore()
    snap = new_snapshot(Kind.FULL, 0, 1, prefix=store.prefix)
    store.save(snap, io.BytesIO(b"x"))
    blob = azurite_server.client().get_container_client(abs_container).get_blob_client(snap.key)
    # Capability check: Azurite implements neither version-level WORM nor legal holds.
    for call in (lambda: blob.set_immutability_policy(ImmutabilityPolicy(
                     expiry_time=datetime.now(timezone.utc) + timedelta(hours=1), policy_mode="Unlocked")),
                 lambda: blob.set_legal_hold(True)):
        with pytest.raises(HttpResponseError) as exc:
            call()
        assert exc.value.status_code == 501
    [listed] = store.list()
    assert listed.immutable_until is None

    from etcdbr.snapstore.abs import HELD_UNTIL, _immutable_until

    expiry = datetime(2031, 2, 3, 4, 5, 6, tzinfo=timezone.utc)
    props = BlobProperties()
    props.immutability_policy = ImmutabilityPolicy(expiry_time=expiry, policy_mode="Locked")
    assert _immutable_until(props) == expiry
    props.has_legal_hold = True
    assert _immutable_until(props) == HELD_UNTIL
    assert _immutable_until(BlobProperties()) is None

    for code in ("BlobImmutableDueToPolicy", "BlobImmutableDueToLegalHold"):
        error = ResourceExistsError(message=f"This operation is not permitted as the blob is immutable ({code}).")
        error.status_code, error.error_code = 409, code
        mapped = store._error(error, snap.key)
        assert isinstance(mapped, ImmutableObject), code
        assert store.display in str(mapped) and snap.key in str(mapped)
    throttled = HttpResponseError(message="Server busy")
    throttled.status_code, throttled.error_code = 503, "ServerBusy"
    assert isinstance(store._error(throttled, snap.key), StoreUnavailable)


def test_abs_server_side_copy_in_blocks(absstore, azurite_server, abs_container, monkeypatch):
    import etcdbr.snapstore.abs as absmod

    src = absstore("src")
    other = azurite_server.create_container(unique_name("abs"))
    dst = absstore("dst", container=other)
    snap = new_snapshot(Kind.FULL, 0, 9, prefix=src.prefix, compression_suffix=".gz")
    source = Source(5 * PART + 7)
    src.save(snap, source)
    [listed] = src.list()
    monkeypatch.setattr(absmod, "COPY_BLOCK", 2 * PART)  # several Put Block From URL ranges
    target = listed.with_prefix(dst.prefix)
    assert dst.copy_from(src, listed, target) is True
    [copied] = dst.list()
    assert copied.key == target.key and copied.size == source.size
    assert digest(dst, copied) == source.sha.hexdigest()
    committed, _ = azurite_server.client().get_container_client(other).get_blob_client(target.key).get_block_list()
    assert len(committed) == 3

    empty = new_snapshot(Kind.INCR, 10, 11, prefix=src.prefix)
    src.save(empty, io.BytesIO(b""))
    assert dst.copy_from(src, empty, empty.with_prefix(dst.prefix)) is True
    assert read_all(dst, empty.with_prefix(dst.prefix)) == b""

    ghost = new_snapshot(Kind.FULL, 0, 77, prefix=src.prefix)
    with pytest.raises(ObjectNotFound):
        dst.copy_from(src, ghost, ghost.with_prefix(dst.prefix))
    assert abs_keys(azurite_server, other, uncommitted=True) == sorted(
        [target.key, empty.with_prefix(dst.prefix).key])

    elsewhere = absstore("dst", container=other, endpoint=azurite_server.endpoint.replace("127.0.0.1", "localhost"))
    assert elsewhere.copy_from(src, listed, target) is False


def test_abs_credentials_directory_of_files_and_bucket_name(azurite_server, abs_container, tmp_path, monkeypatch):
    creds = tmp_path / "azure-secret"
    creds.mkdir()
    (creds / "storageAccount").write_text(azurite_server.account + "\n")
    (creds / "storageKey").write_text(azurite_server.key + "\n")
    (creds / "bucketName").write_text(abs_container)
    (creds / "..data").mkdir()  # Kubernetes secret volume plumbing is ignored
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS", str(creds))
    store = open_store(StoreConfig(provider="ABS", container="", prefix="dir",
                                   endpoint_override=azurite_server.endpoint))
    try:
        assert store.display == f"ABS/{abs_container}"
        store.check()
        snap = new_snapshot(Kind.FULL, 0, 1, prefix=store.prefix)
        store.save(snap, io.BytesIO(b"from files"))
        assert read_all(store, snap) == b"from files"
        assert sorted(store.credentials.sources) == sorted(str(creds / n) for n in ("bucketName", "storageAccount",
                                                                                     "storageKey"))
    finally:
        store.close()

    # A directory holding a JSON file uses that file.
    json_dir = tmp_path / "azure-json"
    json_dir.mkdir()
    _write_abs_json(json_dir / "creds.json", azurite_server.account, azurite_server.key)
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS", str(json_dir))
    store = open_store(StoreConfig(provider="ABS", container=abs_container, prefix="dir",
                                   endpoint_override=azurite_server.endpoint))
    try:
        assert [s.key for s in store.list()] == [snap.key]
    finally:
        store.close()


def test_abs_domain_and_key_validation(tmp_path, monkeypatch):
    path = _write_abs_json(tmp_path / "a.json", "myaccount", base64.b64encode(b"k" * 64).decode(),
                           domain="blob.core.example.test")
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(path))
    store = open_store(StoreConfig(provider="ABS", container="c1"))
    try:
        assert store.account_url == "https://myaccount.blob.core.example.test"
    finally:
        store.close()
    _write_abs_json(path, "myaccount", "not base64 at all!")
    with pytest.raises(ConfigError) as exc:
        open_store(StoreConfig(provider="ABS", container="c1"))
    assert "not base64 at all" not in str(exc.value)
    path.write_text(json.dumps({"storageAccount": "myaccount"}))
    with pytest.raises(ConfigError, match="storageKey"):
        open_store(StoreConfig(provider="ABS", container="c1"))


def test_abs_secondary_prefixed_variables(azurite_server, abs_container, tmp_path, monkeypatch):
    wrong = base64.b64encode(b"not-the-key-" * 5).decode()
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON",
                       str(_write_abs_json(tmp_path / "primary.json", azurite_server.account, wrong)))
    secondary_dir = tmp_path / "secondary"
    secondary_dir.mkdir()
    (secondary_dir / "storageAccount").write_text(azurite_server.account)
    (secondary_dir / "storageKey").write_text(azurite_server.key)
    monkeypatch.setenv("SECONDARY_AZURE_APPLICATION_CREDENTIALS", str(secondary_dir))

    secondary = _abs_store(azurite_server, abs_container, env_prefix="SECONDARY_")
    primary = _abs_store(azurite_server, abs_container)
    try:
        secondary.check()
        snap = new_snapshot(Kind.FULL, 0, 1, prefix=secondary.prefix)
        secondary.save(snap, io.BytesIO(b"secondary"))
        with pytest.raises(PermissionDenied):
            primary.check()
    finally:
        secondary.close()
        primary.close()

    # No silent fallback to the primary's credentials for a secondary without its own.
    monkeypatch.delenv("SECONDARY_AZURE_APPLICATION_CREDENTIALS")
    with pytest.raises(ConfigError, match="SECONDARY_AZURE_APPLICATION_CREDENTIALS"):
        open_store(StoreConfig(provider="ABS", container=abs_container, env_prefix="SECONDARY_"))


def test_abs_rotated_credentials_are_picked_up(azurite_server, abs_container, tmp_path, monkeypatch):
    path = _write_abs_json(tmp_path / "rotating.json", azurite_server.account,
                           base64.b64encode(b"revoked-key-" * 5).decode())
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(path))
    store = _abs_store(azurite_server, abs_container)
    try:
        with pytest.raises(PermissionDenied):
            store.check()
        _write_abs_json(path, azurite_server.account, azurite_server.key, bucketName="ignored-when-flag-set")
        os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
        store.check()
        snap = new_snapshot(Kind.FULL, 0, 1, prefix=store.prefix)
        store.save(snap, io.BytesIO(b"after rotation"))
        assert read_all(store, snap) == b"after rotation"
    finally:
        store.close()


def test_no_secret_in_log_records(azurite_server, abs_container, gcs_server, gcs_bucket, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)
    # The CLI's log set-up quiets the SDKs' loggers process-wide; this test wants all they say.
    for sdk in ("azure", "google", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=sdk)
    good = _write_abs_json(tmp_path / "good.json", azurite_server.account, azurite_server.key)
    wrong_key = base64.b64encode(b"another-secret-" * 4).decode()
    bad = _write_abs_json(tmp_path / "bad.json", azurite_server.account, wrong_key)
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(good))
    monkeypatch.setenv("SECONDARY_AZURE_APPLICATION_CREDENTIALS_JSON", str(bad))
    src = _abs_store(azurite_server, abs_container, prefix="src")
    dst = _abs_store(azurite_server, abs_container, prefix="dst")
    denied = _abs_store(azurite_server, abs_container, env_prefix="SECONDARY_")
    errors = []
    try:
        snap = new_snapshot(Kind.FULL, 0, 1, prefix=src.prefix)
        src.save(snap, Source(4 * PART))
        [listed] = src.list()
        assert dst.copy_from(src, listed, listed.with_prefix(dst.prefix))  # a SAS travels in a header
        read_all(dst, listed.with_prefix(dst.prefix))
        for call in (denied.check, denied.list, lambda: denied.save(snap, io.BytesIO(b"x"))):
            with pytest.raises(PermissionDenied) as exc:
                call()
            errors.append(str(exc.value))
    finally:
        for store in (src, dst, denied):
            store.close()

    sa_path, info = _service_account(tmp_path, "logged", endpoint=gcs_server.endpoint)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(sa_path))
    open_store(StoreConfig(provider="GCS", container=gcs_bucket)).close()
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    gstore = open_store(StoreConfig(provider="GCS", container=gcs_bucket, min_chunk_size=PART))
    try:
        gsnap = new_snapshot(Kind.FULL, 0, 1, prefix=gstore.prefix)
        gstore.save(gsnap, Source(3 * PART))
        gstore.list()
    finally:
        gstore.close()

    # Raw records, extra fields and tracebacks included: the formatter's masking is a second line
    # of defence, not an excuse to hand it secrets.
    plain = logging.Formatter()
    records = [f"{r.getMessage()} {vars(r)!r} {plain.formatException(r.exc_info) if r.exc_info else ''}"
               for r in caplog.records]
    text = "\n".join(records + errors)
    assert caplog.records, "the operations above should have logged something at DEBUG"
    for secret in (azurite_server.key, wrong_key, info["private_key_id"], *info["private_key"].splitlines()[1:3]):
        assert secret not in text
    assert re.search(r"sig=(?!REDACTED)[A-Za-z0-9%]", text) is None
    assert "authorization: sharedkey" not in text.lower()
