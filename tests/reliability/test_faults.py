"""Faults injected while the tool works against real services, each case asserting what survived.

Store faults go through :class:`faultproxy.FaultProxy` in front of the real SeaweedFS S3 server and
fake-gcs-server: the store under test is pointed at the proxy, while the test inspects the bucket
directly (not through the proxy) with the provider's own client. "Nothing partial is listed" is
checked both through the store's listing and the raw bucket, and "nothing staged" against the
provider's multipart-upload (S3) or staging-object (GCS) view.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os

import pytest

from etcdbr.errors import IntegrityError, StoreError, StoreUnavailable
from etcdbr.snapshot import Kind
from etcdbr.verify import verify_store
from faultproxy import FaultProxy
from reliability.helpers import MiB, delta_payload, full_payload, gz, names, snap

pytestmark = pytest.mark.integration


@pytest.fixture(params=["S3", "GCS"])
def remote(request):
    # Each provider's SDK behaves differently under a cut (botocore retries whole requests, the
    # GCS store retries media uploads through google-api-core): both are tried.
    return request.getfixturevalue("s3env" if request.param == "S3" else "gcsenv")


@pytest.fixture
def proxied(remote):
    with FaultProxy.for_url(remote.endpoint, name=f"{remote.provider}-proxy") as proxy:
        yield remote, proxy


def _big_full(mib: int = 12) -> bytes:
    # Random data so that compression cannot shrink it below the multipart threshold.
    pages = mib * MiB // 512
    body = os.urandom(pages * 512)
    return body + hashlib.sha256(body).digest()


def _assert_nothing_partial(env, store, key: str) -> None:
    assert key not in env.raw_keys(), f"partial object {key} is in the bucket"
    assert all(s.key != key for s in store.list(include_all=True))
    assert env.staged() == [], f"upload leftovers: {env.staged()}"


UPLOAD_CUTS = [("S3", "full", "cut"), ("S3", "full", "reset"), ("S3", "delta", "cut"), ("S3", "delta", "reset"),
               # GCS: one FIN and one RST case (the SDK path is the same for both kinds).
               ("GCS", "full", "cut"), ("GCS", "delta", "reset")]


@pytest.mark.parametrize("provider,what,fault", UPLOAD_CUTS, ids=["-".join(c) for c in UPLOAD_CUTS])
def test_cut_mid_upload_leaves_nothing_then_succeeds(request, outcome, provider, what, fault):
    env = request.getfixturevalue("s3env" if provider == "S3" else "gcsenv")
    proxy = FaultProxy.for_url(env.endpoint, name=f"{provider}-proxy").start()
    request.addfinalizer(proxy.stop)
    store = env.store(endpoint=proxy.url())
    direct = env.store()
    if what == "full":
        s = snap(store, Kind.FULL, 0, 100, suffix="")
        payload = _big_full()  # multipart: 3 parts of 5 MiB
        cut_at = 2 * MiB + 12345
    else:
        s = snap(store, Kind.INCR, 101, 300)
        payload = gz(delta_payload(101, 300))  # one small request
        cut_at = len(payload) // 2
    # Every connection is cut mid-body for as long as the fault lasts: retries cannot get through.
    proxy.cut_after(cut_at, "up", reset=(fault == "reset"))
    with pytest.raises(StoreError) as info:
        store.save(s, io.BytesIO(payload))
    assert isinstance(info.value, StoreUnavailable), info.value
    assert proxy.stats.cuts >= 1
    proxy.pass_through()
    _assert_nothing_partial(env, direct, s.key)
    # The store is back: the same snapshot is retaken and lands whole.
    assert store.save(s, io.BytesIO(payload)) == len(payload)
    assert names(direct.list()) == [s.snap_name]
    with direct.fetch(s) as stream:
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(payload).digest()
    assert env.staged() == []
    outcome.record("fault", f"{env.provider} connection {'cut (FIN)' if fault == 'cut' else 'reset (RST)'} "
                   f"mid-upload of a {what} snapshot, every attempt", f"{env.provider} store save",
                   f"save raised StoreUnavailable naming {env.provider}/<bucket>; nothing listed or staged; "
                   "retaken whole once the store was back")


@pytest.mark.parametrize("what", ["full", "delta"])
def test_single_cut_is_retried_transparently(proxied, outcome, what):
    env, proxy = proxied
    store = env.store(endpoint=proxy.url())
    if what == "full":
        s, payload, cut_at = snap(store, Kind.FULL, 0, 100, suffix=""), _big_full(), 3 * MiB
    else:
        s = snap(store, Kind.INCR, 101, 300)
        payload = gz(delta_payload(101, 300))
        cut_at = len(payload) // 3
    proxy.cut_after(cut_at, "up", reset=True, connections=1)
    assert store.save(s, io.BytesIO(payload)) == len(payload)
    assert proxy.stats.cuts == 1
    with env.store().fetch(s) as stream:
        assert stream.read() == payload
    assert env.staged() == []
    outcome.record("fault", f"{env.provider} connection reset once mid-upload of a {what} snapshot",
                   f"{env.provider} store save", "the request was retried; object stored byte-identical")


def test_cut_mid_download_is_an_error_never_short_data(proxied, outcome):
    env, proxy = proxied
    store = env.store(endpoint=proxy.url())
    s = snap(store, Kind.FULL, 0, 100, suffix="")
    payload = full_payload(pages=4096)  # 2 MiB
    env.store().save(s, io.BytesIO(payload))
    proxy.cut_after(300_000, "down")
    with pytest.raises((StoreError, IntegrityError)):
        with store.fetch(s) as stream:
            got = stream.read()
            # An SDK that resumes a broken download (GCS ranged reads) may still deliver it whole.
            assert got == payload, "a broken download returned short or wrong data without an error"
            raise StoreUnavailable("download resumed after the cut", endpoint=store.display)
    outcome.record("fault", f"{env.provider} connection cut mid-download", f"{env.provider} store fetch",
                   "read raised a StoreError (or resumed and returned every byte); never short data")


def test_latency_slows_but_does_not_break(proxied, outcome):
    env, proxy = proxied
    store = env.store(endpoint=proxy.url())
    proxy.latency(0.05)
    chain = [snap(store, Kind.FULL, 0, 10), snap(store, Kind.INCR, 11, 20, minutes=1)]
    store.save(chain[0], io.BytesIO(gz(full_payload())))
    store.save(chain[1], io.BytesIO(gz(delta_payload(11, 20))))
    assert names(store.list()) == names(chain)
    assert verify_store(store).ok
    outcome.record("fault", f"{env.provider} 50 ms latency on every packet", f"{env.provider} store",
                   "uploads, listing and verify succeed, slower")


def test_store_refusing_connections_is_unavailable_not_empty(proxied, outcome):
    env, proxy = proxied
    store = env.store(endpoint=proxy.url())
    s = snap(store, Kind.FULL, 0, 10)
    env.store().save(s, io.BytesIO(gz(full_payload())))
    proxy.refuse()
    with pytest.raises(StoreUnavailable) as info:
        store.list()
    assert env.provider in str(info.value)
    proxy.pass_through()
    assert names(store.list()) == [s.snap_name]
    outcome.record("fault", f"{env.provider} refusing connections while listing", f"{env.provider} store list",
                   f"StoreUnavailable: {str(info.value)[:120]}; never an empty listing")


# -- credentials rotated on disk -------------------------------------------------------------------
def test_rotated_s3_credentials_are_picked_up_without_restart(s3env, outcome, caplog):
    caplog.set_level(logging.INFO)
    store = s3env.store()
    s1 = snap(store, Kind.FULL, 0, 10)
    store.save(s1, io.BytesIO(gz(full_payload())))
    # Rotate to a key the server does not know: the very next call must use it (and fail).
    s3env.write_credentials(secret="rotated-but-not-yet-valid-0123456789")
    os.utime(s3env.creds_path, ns=(1, 1))  # mtime alone may not move within one clock tick
    with pytest.raises(StoreError) as info:
        store.list()
    message = str(info.value)
    assert "credentials refused" in message or "Signature" in message or "denied" in message.lower()
    # Rotate back to a valid key: picked up without rebuilding the store by hand.
    s3env.write_credentials()
    s2 = snap(store, Kind.INCR, 11, 20, minutes=1)
    store.save(s2, io.BytesIO(gz(delta_payload(11, 20))))
    assert names(store.list()) == [s1.snap_name, s2.snap_name]
    assert "credentials changed; store clients rebuilt" in caplog.text
    outcome.record("fault", "S3 credentials file rotated on disk (valid -> revoked -> valid) while the store is in use",
                   "S3 store", "each rotation used from the next call on, without restart", "nothing")


def test_malformed_rotation_keeps_the_previous_credentials(s3env, outcome, caplog):
    caplog.set_level(logging.INFO)
    store = s3env.store()
    s3env.creds_path.write_text('{"accessKeyID": "half-writ')
    s1 = snap(store, Kind.FULL, 0, 10)
    store.save(s1, io.BytesIO(gz(full_payload())))  # still works with the credentials it had
    assert names(store.list()) == [s1.snap_name]
    warnings = [r for r in caplog.records if "cannot be used; keeping the previous ones" in r.getMessage()]
    assert len(warnings) == 1, "one warning per change, not one per call"
    outcome.record("fault", "S3 credentials file replaced by malformed JSON while in use", "S3 store",
                   "one warning naming the file; previous credentials kept; uploads continue")


def test_rotated_abs_key_is_picked_up(azurite_server, abs_container, tmp_path, monkeypatch, outcome):
    import json as _json

    from etcdbr.config import StoreConfig
    from etcdbr.snapstore import open_store

    creds = tmp_path / "azure.json"

    def write(key: str) -> None:
        tmp = creds.with_suffix(".tmp")
        tmp.write_text(_json.dumps({"storageAccount": azurite_server.account, "storageKey": key}))
        tmp.replace(creds)

    write(azurite_server.key)
    monkeypatch.setenv("AZURE_APPLICATION_CREDENTIALS_JSON", str(creds))
    store = open_store(StoreConfig(provider="ABS", container=abs_container, prefix="etcd",
                                   endpoint_override=azurite_server.endpoint))
    try:
        store.check()
        import base64

        write(base64.b64encode(b"wrong-key-" * 6).decode())
        with pytest.raises(StoreError):
            store.list()
        write(azurite_server.key)
        s1 = snap(store, Kind.FULL, 0, 10)
        store.save(s1, io.BytesIO(gz(full_payload())))
        assert names(store.list()) == [s1.snap_name]
    finally:
        store.close()
    outcome.record("fault", "ABS storage key rotated on disk while the store is in use", "ABS store",
                   "new key used from the next call on, without restart")
