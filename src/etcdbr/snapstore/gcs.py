"""Google Cloud Storage through google-cloud-storage.

Credentials (compatibility.md §1.3): ``<P>GOOGLE_APPLICATION_CREDENTIALS`` names a service-account
or external-account JSON file (``P`` = ``SECONDARY_`` or ``SOURCE_`` for those endpoints); a file
``storageAPIEndpoint`` beside it overrides the API endpoint. ``<P>STORAGE_EMULATOR_HOST`` (or the
unprefixed one, which the Go SDK reads for every endpoint) selects an emulator. Endpoint order:
``--store-endpoint-override``, the ``storageAPIEndpoint`` file, the emulator host, Google.
Requests are anonymous for an emulator, and for a plain-http endpoint without a credentials file
(an emulator too: Google serves only https, and a bearer token must not travel in clear).
Otherwise the credentials file is used, or else Application Default Credentials.

Uploads of more than one part follow the Go tool (upload components, compose them) without knowing
the size in advance. Components go to a staging area outside the snapshot tree,
``<prefix-parent>/.etcdbr-staging/<upload id>/``, and while the upload goes on they are folded 31 at
a time into an accumulating staging object (compose takes at most 32 sources). Only the last
compose writes the snapshot's name, so a snapshot never lists half-written. A failed upload deletes
its staging area; one abandoned by a crash is swept by ``check()`` after a day.

Immutability: ``immutable_until`` is the object's retention expiry (bucket retention policy, or
object retention). A temporary or event-based hold has no expiry: such an object is reported
immutable until ``HELD_UNTIL`` (year 9999), so GC skips it until the hold is released, and the HTTP
API shows why. Deleting either kind is answered 403 by GCS and raised as ImmutableObject.
"""

from __future__ import annotations

import base64
import io
import logging
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Iterator
from urllib.parse import quote

import google_crc32c
import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse

from ..errors import (
    ConfigError,
    EtcdbrError,
    ImmutableObject,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
)
from ..snapshot import Snapshot
from .base import ObjectAttrs, SnapStore
from .gcsclient import GOOGLE_ENDPOINT, build_client, sdk_retry
from .objectstore import ObjectStore
from .providers import CONTENT_TYPE, GCS, HELD_UNTIL, LIST_PAGE, STAGING_DIR, first_line, marked_excluded, short_reason
from .streams import TranslatingReader

log = logging.getLogger(__name__)

#: Staging objects untouched for this long belong to an upload that died with its process.
STALE_STAGING = timedelta(hours=24)
COMPOSE_LIMIT = 32
READ_CHUNK = 8 * 1024 * 1024
DELETE_WORKERS = 8

_IMMUTABLE_MESSAGE = re.compile(r"\bretention\b|\bhold\b|\bretained\b", re.IGNORECASE)


@dataclass
class _Upload:
    """State of one composed upload, shared by the part-upload threads."""

    key: str
    staging: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Held by whoever composes; composes of one upload run one at a time and in order.
    composing: threading.Lock = field(default_factory=threading.Lock)
    #: Uploaded components not yet folded into the accumulator: part number -> object name.
    ready: dict = field(default_factory=dict)
    folded_upto: int = 0
    accumulator: str | None = None
    step: int = 0


class GCSStore(ObjectStore):
    provider = GCS

    def __init__(self, config) -> None:
        super().__init__(config)
        self.bucket_name = config.container
        if not self.bucket_name:
            raise ConfigError("GCS needs a bucket: set --store-container (or STORAGE_CONTAINER)")
        # The default pool keeps 10 connections; parallel parts plus deletes need more.
        pool_size = max(10, config.max_parallel_chunk_uploads * 2 + DELETE_WORKERS)
        self.client, self.endpoint, self.credentials = build_client(config, self.display, pool_size)
        self.bucket = self.client.bucket(self.bucket_name)
        #: (connect, read) seconds per HTTP request: --store-timeout.
        self._timeout = (self.connect_timeout, self.request_timeout)
        self._retry = sdk_retry()
        self.staging_root = self.list_root() + STAGING_DIR + "/"
        bucket = quote(self.bucket_name, safe="")
        self._upload_url = f"{self.client._connection.API_BASE_URL}/upload/storage/v1/b/{bucket}/o"

    def close(self) -> None:
        self._close_client(self.client)

    # -- naming ------------------------------------------------------------------------------
    @property
    def endpoint_display(self) -> str:
        return self.endpoint or GOOGLE_ENDPOINT

    @property
    def service_identity(self) -> tuple:
        return ("GCS", self.endpoint_display.rstrip("/"))

    # -- errors ------------------------------------------------------------------------------
    def _error(self, exc: BaseException, key: str = "", *, bucket: str | None = None,
               listing: bool = False) -> EtcdbrError:
        """Map one google-cloud-storage failure to our error family (the only place that knows them)."""
        if isinstance(exc, EtcdbrError):
            return exc
        endpoint = self.display if bucket in (None, self.bucket_name) else f"GCS/{bucket}"
        if isinstance(exc, api_exceptions.RetryError) and exc.cause is not None:
            return self._error(exc.cause, key, bucket=bucket, listing=listing)
        status, message = 0, ""
        if isinstance(exc, api_exceptions.GoogleAPICallError):
            status, message = int(exc.code or 0), exc.message or ""
        elif isinstance(exc, InvalidResponse):
            status, message = int(getattr(exc.response, "status_code", 0) or 0), first_line(exc)
        if status:
            return self._http_error(status, message, endpoint, key, listing)
        if isinstance(exc, auth_exceptions.RefreshError):
            if getattr(exc, "retryable", False):
                return StoreUnavailable(f"cannot refresh the access token: {first_line(exc)}", endpoint=endpoint,
                                        key=key)
            return PermissionDenied(f"credentials refused: {first_line(exc)}", endpoint=endpoint, key=key)
        if isinstance(exc, auth_exceptions.DefaultCredentialsError):
            return ConfigError(f"{endpoint}: {first_line(exc)}")
        if isinstance(exc, DataCorruption):
            return StoreUnavailable("checksum mismatch in transfer", endpoint=endpoint, key=key)
        if isinstance(exc, requests.Timeout):
            return StoreUnavailable(self._timed_out(self.endpoint_display, isinstance(exc, requests.ConnectTimeout)),
                                    endpoint=endpoint, key=key)
        if isinstance(exc, (requests.RequestException, auth_exceptions.TransportError, api_exceptions.RetryError,
                            ConnectionError, TimeoutError, OSError)):
            return StoreUnavailable(f"cannot reach {self.endpoint_display}: {short_reason(exc)}", endpoint=endpoint,
                                    key=key)
        return StoreUnavailable(f"{type(exc).__name__}: {first_line(exc)}", endpoint=endpoint, key=key)

    def _http_error(self, status: int, message: str, endpoint: str, key: str, listing: bool) -> EtcdbrError:
        """The error for an HTTP answer of ``status`` (part of :meth:`_error`)."""
        detail = f"HTTP {status}: {message}" if message else f"HTTP {status}"
        if status == 404:
            # Listing a prefix never 404s for want of objects: only the bucket can be missing.
            if listing or "bucket" in message.lower():
                return StoreError(f"bucket {self.bucket_name!r} does not exist at {self.endpoint_display}",
                                  endpoint=endpoint, key=key)
            return ObjectNotFound("no such object", endpoint=endpoint, key=key)
        if status == 403 and _IMMUTABLE_MESSAGE.search(message):
            return ImmutableObject(f"refused under retention or hold: {message}", endpoint=endpoint, key=key)
        if status in (401, 403):
            return PermissionDenied(f"access refused by {self.endpoint_display}: {detail}", endpoint=endpoint,
                                    key=key)
        if status in (408, 429) or status >= 500:
            return StoreUnavailable(f"{self.endpoint_display} answered {detail}", endpoint=endpoint, key=key)
        return StoreError(f"{self.endpoint_display} refused the request: {detail}", endpoint=endpoint, key=key)

    # -- listing -----------------------------------------------------------------------------
    def _check(self) -> None:
        # Listing needs only storage.objects.list, which every use of the store needs anyway
        # (buckets.get is often not granted to a backup service account).
        try:
            for _ in self.client.list_blobs(self.bucket, prefix=self.prefix + "/", max_results=1,
                                            timeout=self._timeout, retry=self._retry):
                break
        except Exception as exc:
            raise self._error(exc, listing=True) from exc

    def _sweep_leftovers(self) -> None:
        self._sweep_staging()

    def _list_objects(self, prefix: str, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        for blob in self.client.list_blobs(self.bucket, prefix=prefix, page_size=LIST_PAGE,
                                           timeout=self._timeout, retry=self._retry):
            if blob.name.startswith(self.staging_root):
                continue
            if not include_all and marked_excluded(blob.metadata):
                continue
            yield blob.name, ObjectAttrs(size=blob.size, immutable_until=_immutable_until(blob))

    def _listing_error(self, exc: BaseException, prefix: str) -> EtcdbrError:
        return self._error(exc, listing=True)

    def _sweep_staging(self) -> None:
        """Delete the staging objects of uploads that died with their process (best effort)."""
        cutoff = datetime.now(timezone.utc) - STALE_STAGING
        try:
            stale = [b.name for b in self.client.list_blobs(self.bucket, prefix=self.staging_root, page_size=LIST_PAGE,
                                                            timeout=self._timeout, retry=self._retry)
                     if b.updated is not None and b.updated < cutoff]
        except Exception as exc:  # noqa: BLE001 - best effort: the sweep runs again with the next store
            log.warning("could not list abandoned upload leftovers",
                        extra={"store": self.display, "error": str(self._error(exc, self.staging_root))})
            return
        if stale:
            log.info("removing leftovers of abandoned uploads", extra={"store": self.display, "objects": len(stale)})
            self._delete_many(stale)

    # -- reading and deleting ----------------------------------------------------------------
    def _open_read(self, key: str, version_id: str = "") -> BinaryIO:
        # Pinning the generation keeps a concurrent overwrite from mixing two objects' bytes.
        blob = self._call(key, self.bucket.get_blob, key, timeout=self._timeout, retry=self._retry)
        if blob is None:
            raise ObjectNotFound("no such object", endpoint=self.display, key=key)
        reader = blob.open("rb", chunk_size=READ_CHUNK, raw_download=True, timeout=self._timeout, retry=self._retry)
        return io.BufferedReader(TranslatingReader(reader, self, key), buffer_size=1024 * 1024)

    def _delete_object(self, key: str, version_id: str = "") -> None:
        self._call(key, self.bucket.delete_blob, key, timeout=self._timeout, retry=self._retry)

    def _delete_many(self, names: list[str]) -> None:
        """Delete objects in parallel; missing ones are fine, other failures are logged."""

        def delete(name: str) -> None:
            try:
                self.bucket.delete_blob(name, timeout=self._timeout, retry=self._retry)
            except api_exceptions.NotFound:
                pass
            except Exception as exc:  # noqa: BLE001 - best effort: a leftover is swept later
                log.warning("could not delete staging object",
                            extra={"store": self.display, "key": name, "error": str(self._error(exc, name))})

        if len(names) == 1:
            delete(names[0])
        elif names:
            with ThreadPoolExecutor(min(DELETE_WORKERS, len(names)), thread_name_prefix="gcs-delete") as pool:
                list(pool.map(delete, names))

    # -- uploads -----------------------------------------------------------------------------
    def _put_small(self, key: str, data: bytes) -> None:
        self._call(key, self._upload_bytes, key, data)

    def _upload_bytes(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        """One-request media upload of ``data``, checked against the CRC32C the service computed.

        The SDK's uploads build a second copy of the part (multipart body, or resumable chunks);
        a media upload sends the caller's buffer as it is, which keeps memory at one copy per part
        in flight. ``exclusive`` adds ``ifGenerationMatch=0`` (create only).
        """
        params = {"uploadType": "media", "name": name}
        if exclusive:
            params["ifGenerationMatch"] = "0"
        expected = base64.b64encode(google_crc32c.Checksum(data).digest()).decode()

        def send() -> None:
            response = self.client._http.request(
                "POST", self._upload_url, params=params, data=data, timeout=self._timeout,
                headers={"Content-Type": CONTENT_TYPE, "X-Goog-Hash": f"crc32c={expected}"})
            if response.status_code >= 400:
                raise api_exceptions.from_http_response(response)
            stored = (response.json() or {}).get("crc32c")
            if stored and stored != expected:
                # GCS validates X-Goog-Hash itself; this catches a server that does not. The bad
                # object must go, or the exclusive retry would take it for an earlier success.
                try:
                    self.bucket.delete_blob(name, timeout=self._timeout)
                except Exception:  # noqa: BLE001 - the mismatch raised below is what matters; the retry replaces it
                    pass
                raise DataCorruption(response, f"crc32c mismatch: sent {expected}, stored {stored}")

        self._retry(send)()

    def _begin_upload(self, key: str) -> Any:
        return _Upload(key=key, staging=f"{self.staging_root}{uuid.uuid4().hex}/")

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        name = f"{upload.staging}{number:010d}"
        try:
            # The name is unique to this upload and part, so an existing object (412) can only be an
            # earlier attempt of this very call whose answer got lost.
            self._upload_bytes(name, data, exclusive=True)
        except api_exceptions.PreconditionFailed:
            pass
        except Exception as exc:
            raise self._error(exc, upload.key) from exc
        with upload.lock:
            upload.ready[number] = name
        # Fold while uploading so that staging stays small; if another thread is composing, it
        # (or the completion) will pick this part up.
        if upload.composing.acquire(blocking=False):
            try:
                self._fold(upload, keep_last=True)
            finally:
                upload.composing.release()
        return name

    def _fold(self, upload: _Upload, *, keep_last: bool) -> None:
        """Compose consecutive ready components into the accumulator while a full batch is there.

        With ``keep_last`` a batch is folded only when a part after it is ready too, so that the
        final compose always has a component besides the accumulator. Each step writes a new name
        (``acc-<step>``) from sources that never change, so repeating a step after a lost answer
        produces the same object.
        """
        while True:
            with upload.lock:
                room = COMPOSE_LIMIT - (1 if upload.accumulator else 0)
                first = upload.folded_upto + 1
                numbers = list(range(first, first + room))
                if not all(n in upload.ready for n in numbers):
                    return
                if keep_last and first + room not in upload.ready:
                    return
                batch = [upload.ready[n] for n in numbers]
                previous, step = upload.accumulator, upload.step + 1
            target = f"{upload.staging}acc-{step:06d}"
            self._compose(target, ([previous] if previous else []) + batch, upload.key, exclusive=True)
            with upload.lock:
                upload.accumulator, upload.step, upload.folded_upto = target, step, numbers[-1]
                for n in numbers:
                    del upload.ready[n]
            self._delete_many(([previous] if previous else []) + batch)

    def _compose(self, target: str, sources: list[str], key: str, *, exclusive: bool = False) -> None:
        blob = self.bucket.blob(target)
        blob.content_type = CONTENT_TYPE
        kwargs = {"if_generation_match": 0} if exclusive else {}
        try:
            blob.compose([self.bucket.blob(s) for s in sources], timeout=self._timeout, retry=self._retry, **kwargs)
        except api_exceptions.PreconditionFailed:
            if not exclusive:
                raise self._error(api_exceptions.PreconditionFailed("compose precondition failed"), key) from None
            # Our own earlier attempt of this step got through.
        except Exception as exc:
            raise self._error(exc, key) from exc

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        with upload.composing:
            self._fold(upload, keep_last=False)
            with upload.lock:
                remaining = [upload.ready[n] for n in sorted(upload.ready)]
                sources = ([upload.accumulator] if upload.accumulator else []) + remaining
            # The snapshot name appears here, complete, or not at all. No generation precondition:
            # saving a name again replaces it, as on every other provider.
            self._compose(upload.key, sources, upload.key)
        try:
            self._remove_staging(upload)
        except Exception as exc:  # noqa: BLE001 - the snapshot is stored; leftovers are swept later
            log.warning("could not remove upload staging objects",
                        extra={"store": self.display, "key": upload.key, "error": str(self._error(exc, upload.key))})

    def _abort_upload(self, upload: Any) -> None:
        try:
            self._remove_staging(upload)
        except Exception as exc:
            raise self._error(exc, upload.key) from exc

    def _remove_staging(self, upload: _Upload) -> None:
        # List rather than trust our bookkeeping: a part whose answer was lost still left an object.
        names = [b.name for b in self.client.list_blobs(self.bucket, prefix=upload.staging, page_size=LIST_PAGE,
                                                        timeout=self._timeout, retry=self._retry)]
        self._delete_many(names)

    # -- server-side copy --------------------------------------------------------------------
    def content_fingerprint(self, snapshot: Snapshot) -> tuple[int, str] | None:
        """Size and CRC32C: GCS computes the CRC32C of every object's bytes itself, composed and
        rewritten ones included, so a good copy reports the source's."""
        key = self.object_key(snapshot)
        blob = self._call(key, self.bucket.get_blob, key, timeout=self._timeout, retry=self._retry)
        if blob is None:
            raise ObjectNotFound("no such object", endpoint=self.display, key=key)
        if not blob.crc32c or blob.size is None:
            return None
        return int(blob.size), "crc32c:" + blob.crc32c

    def copy_from(self, other: SnapStore, src: Snapshot, dst: Snapshot) -> bool:
        """Rewrite inside GCS when ``other`` is on the same endpoint; False to make the caller stream.

        The rewrite runs with this store's credentials, which must be able to read the source
        bucket; when GCS refuses (403), False lets the caller stream the bytes instead. The
        destination appears only when the rewrite is complete.
        """
        peer = self._peer(other)
        if peer is None:
            return False
        src_key, dst_key = peer.object_key(src), self.object_key(dst)
        source = self.client.bucket(peer.bucket_name).blob(src_key)
        target = self.bucket.blob(dst_key)
        token = None
        try:
            while True:
                token, _, _ = target.rewrite(source, token=token, timeout=self._timeout, retry=self._retry)
                if token is None:
                    break
        except Exception as exc:
            mapped = self._error(exc, src_key, bucket=peer.bucket_name)
            if isinstance(mapped, PermissionDenied):
                return self._copy_refused(peer, src_key, mapped.reason)
            raise mapped from exc
        return True


def _immutable_until(blob) -> datetime | None:
    until = blob.retention_expiration_time
    retention = getattr(blob, "retention", None)
    retain = getattr(retention, "retain_until_time", None) if retention is not None else None
    if retain is not None and (until is None or retain > until):
        until = retain
    if blob.temporary_hold or blob.event_based_hold:
        return HELD_UNTIL
    return until
