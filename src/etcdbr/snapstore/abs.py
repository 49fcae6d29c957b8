"""Azure Blob Storage through azure-storage-blob, with shared-key authentication.

Credentials (compatibility.md §1.3): ``<P>AZURE_APPLICATION_CREDENTIALS[_JSON]`` with
``storageAccount``, ``storageKey``, optional ``domain`` (default ``blob.core.windows.net``) and
``bucketName``. The account URL is ``https://<account>.<domain>``, or ``--store-endpoint-override``
as given (for Azurite: ``http://127.0.0.1:10000/devstoreaccount1``). The container must exist.

Uploads stage blocks and commit the block list at the end, so a blob appears complete or not at
all. A failed upload to a new name deletes the name, which discards its uncommitted blocks at once
(otherwise Azure keeps them, billed, for a week); when a committed blob of that name existed
before, its blocks are left to expire rather than risk the object. Block IDs carry a per-attempt
token, all of one length (Azure wants equal lengths within a blob), so blocks left by an earlier
attempt on the same name can never be committed by mistake.

Immutability: ``immutable_until`` is the blob's version-level WORM expiry; a legal hold has no
expiry and is reported as ``HELD_UNTIL`` (year 9999), as for GCS holds. Deletion refused by either
is raised as ImmutableObject.

Server-side copy stages blocks from the source URL (Put Block From URL, authorised by a short-lived
read SAS signed with the source store's key) and commits them: unlike an asynchronous Copy Blob,
nothing is visible at the destination until the copy is whole, and an interrupted copy leaves only
uncommitted blocks.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import re
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Iterator

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, ContentSettings, LinearRetry, generate_blob_sas

from .. import logs
from ..errors import (
    ConfigError,
    EtcdbrError,
    ImmutableObject,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
)
from ..retry import SDK_ATTEMPTS, SDK_RETRY_PAUSE
from ..snapshot import Snapshot
from .base import ObjectAttrs, SnapStore
from .credentials import load_credentials, require
from .objectstore import ObjectStore
from .providers import ABS, CONTENT_TYPE, HELD_UNTIL, LIST_PAGE, first_line, marked_excluded, short_reason
from .streams import ChunksBody, TranslatingReader

log = logging.getLogger(__name__)

# azure-core logs every request's and response's headers at INFO; we never want them in our logs.
logging.getLogger("azure.core.pipeline.policies.http_logging_policy").setLevel(logging.WARNING)

DEFAULT_DOMAIN = "blob.core.windows.net"
MAX_SINGLE_PUT = 5000 * 1024 * 1024
READ_CHUNK = 4 * 1024 * 1024
#: Range copied by one Put Block From URL (the service accepts up to 4000 MiB; smaller ranges
#: keep each request well inside its timeout and let ranges run in parallel).
COPY_BLOCK = 100 * 1024 * 1024
#: Lifetime of the read SAS handed to the service for a copy.
COPY_SAS_LIFETIME = timedelta(hours=6)
_SAS_SIGNATURE = re.compile(r"(sig=)[^&\s\"'<]+", re.IGNORECASE)
_IMMUTABLE_CODES = ("Immutable", "LegalHold")


class _Upload:
    __slots__ = ("key", "token", "existed")

    def __init__(self, key: str, existed: bool) -> None:
        self.key = key
        self.token = uuid.uuid4().hex[:12]
        #: A committed blob of this name was there before we started staging.
        self.existed = existed

    def block_id(self, number: int) -> str:
        return _block_id(f"{self.token}-{number:010d}")


def _block_id(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class ABSStore(ObjectStore):
    provider = ABS

    def __init__(self, config) -> None:
        super().__init__(config)
        creds = load_credentials(config, "AZURE")
        var = f"{config.env_prefix}AZURE_APPLICATION_CREDENTIALS"
        if creds is None:
            raise ConfigError(f"ABS needs credentials: set {var}_JSON (a JSON file) or {var} (a directory)")
        logs.register_secret(str(creds.get("storageKey") or ""))
        require(creds, ["storageAccount", "storageKey"], "ABS")
        self.credentials = creds
        self.account = str(creds.get("storageAccount")).strip()
        self._key = str(creds.get("storageKey")).strip()
        try:
            base64.b64decode(self._key, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError(f"{var}: storageKey is not a base64 account key") from None
        self.container_name = config.container or str(creds.get("bucketName") or "")
        if not self.container_name:
            raise ConfigError("ABS needs a container: set --store-container or bucketName in the ABS credentials")
        domain = str(creds.get("domain") or DEFAULT_DOMAIN).strip().strip("/")
        self.account_url = (config.endpoint_override or f"https://{self.account}.{domain}").rstrip("/")
        try:
            self.service = BlobServiceClient(
                self.account_url,
                credential={"account_name": self.account, "account_key": self._key},
                # The SDK's default waits 15 s and more between tries; an unreachable store should
                # be reported within seconds (our callers retry at their own pace): SDK_ATTEMPTS
                # tries per request, each bounded by --store-timeout, about SDK_RETRY_PAUSE apart.
                # (azure-storage-blob annotates the pauses as int; its policy computes with floats.)
                retry_policy=LinearRetry(backoff=SDK_RETRY_PAUSE,  # type: ignore[arg-type]
                                         retry_total=SDK_ATTEMPTS - 1,
                                         random_jitter_range=SDK_RETRY_PAUSE / 2),  # type: ignore[arg-type]
                connection_timeout=self.connect_timeout,
                read_timeout=self.request_timeout,
                max_single_get_size=READ_CHUNK,
                # _put_small gets less than one part: send it in one Put Blob, never as SDK-named
                # blocks (their IDs could clash in length with blocks a failed upload left).
                max_single_put_size=MAX_SINGLE_PUT,
                max_chunk_get_size=READ_CHUNK,
                logging_enable=False,
            )
        except ValueError as exc:
            raise ConfigError(f"{self.display}: cannot set up the ABS client: {exc}") from None
        self.container = self.service.get_container_client(self.container_name)

    def close(self) -> None:
        self._close_client(self.service)

    # -- naming ------------------------------------------------------------------------------
    @property
    def display(self) -> str:
        # The container may come from bucketName in the credentials rather than the flag.
        return f"ABS/{getattr(self, 'container_name', '') or self.config.container}"

    @property
    def service_identity(self) -> tuple:
        return ("ABS", self.account_url)

    def _blob(self, key: str):
        return self.container.get_blob_client(key)

    # -- errors ------------------------------------------------------------------------------
    def _error(self, exc: BaseException, key: str = "", *, container: str | None = None) -> EtcdbrError:
        """Map one azure-core failure to our error family (the only place that knows Azure's)."""
        if isinstance(exc, EtcdbrError):
            return exc
        endpoint = self.display if container in (None, self.container_name) else f"ABS/{container}"
        if isinstance(exc, (ServiceRequestTimeoutError, ServiceResponseTimeoutError)):
            return StoreUnavailable(self._timed_out(self.account_url, isinstance(exc, ServiceRequestTimeoutError)),
                                    endpoint=endpoint, key=key)
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return StoreUnavailable(f"cannot reach {self.account_url}: {_short(exc)}", endpoint=endpoint, key=key)
        if isinstance(exc, HttpResponseError):
            status = int(getattr(exc, "status_code", 0) or 0)
            code = str(getattr(exc, "error_code", "") or "")
            detail = f"HTTP {status} {code}".strip() + (f": {_message(exc)}" if _message(exc) else "")
            if code == "ContainerNotFound":
                return StoreError(f"container {self.container_name!r} does not exist at {self.account_url}",
                                  endpoint=endpoint, key=key)
            if isinstance(exc, ResourceNotFoundError) or status == 404:
                return ObjectNotFound("no such object", endpoint=endpoint, key=key)
            if any(marker in code for marker in _IMMUTABLE_CODES):
                return ImmutableObject(f"refused under immutability policy or legal hold ({code})",
                                       endpoint=endpoint, key=key)
            if isinstance(exc, ClientAuthenticationError) or status in (401, 403):
                return PermissionDenied(f"access refused by {self.account_url}: {detail}", endpoint=endpoint, key=key)
            if status in (408, 429) or status >= 500:
                return StoreUnavailable(f"{self.account_url} answered {detail}", endpoint=endpoint, key=key)
            return StoreError(f"{self.account_url} refused the request: {detail}", endpoint=endpoint, key=key)
        if isinstance(exc, (AzureError, ConnectionError, TimeoutError, OSError)):
            return StoreUnavailable(f"cannot reach {self.account_url}: {_short(exc)}", endpoint=endpoint, key=key)
        return StoreUnavailable(f"{type(exc).__name__}: {_short(exc)}", endpoint=endpoint, key=key)

    # -- listing -----------------------------------------------------------------------------
    def _check(self) -> None:
        self._call("", self.container.get_container_properties)

    def _list_objects(self, prefix: str, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        include = ["copy", "immutabilitypolicy", "legalhold"]
        if not include_all:
            include.append("tags")
        for blob in self.container.list_blobs(name_starts_with=prefix or None, include=include,
                                              results_per_page=LIST_PAGE):
            # The destination of an unfinished or failed asynchronous copy (by another tool)
            # exists but is not a whole object.
            copy = getattr(blob, "copy", None)
            if copy is not None and copy.status and copy.status != "success":
                continue
            if not include_all and marked_excluded(blob.tags):
                continue
            yield blob.name, ObjectAttrs(size=blob.size, immutable_until=_immutable_until(blob))

    # -- reading and deleting ----------------------------------------------------------------
    def _open_read(self, key: str, version_id: str = "") -> BinaryIO:
        # The first range is fetched here (a missing blob fails now); later ranges are bound to
        # the same ETag, so an overwrite during the read fails instead of mixing two objects.
        downloader = self._call(key, self._blob(key).download_blob, max_concurrency=1)
        return io.BufferedReader(TranslatingReader(ChunksBody(downloader.chunks()), self, key), buffer_size=1024 * 1024)

    def _delete_object(self, key: str, version_id: str = "") -> None:
        self._call(key, self._blob(key).delete_blob, delete_snapshots="include")

    # -- uploads -----------------------------------------------------------------------------
    def _put_small(self, key: str, data: bytes) -> None:
        self._call(key, self._blob(key).upload_blob, data, length=len(data), overwrite=True,
                   content_settings=ContentSettings(content_type=CONTENT_TYPE), max_concurrency=1)

    def _begin_upload(self, key: str) -> Any:
        return _Upload(key, existed=bool(self._call(key, self._blob(key).exists)))

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        block_id = upload.block_id(number)
        self._call(upload.key, self._blob(upload.key).stage_block, block_id, data, length=len(data),
                   validate_content=True)
        return block_id

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        # Committing names exactly our blocks; anything else staged on this name is discarded.
        self._call(upload.key, self._blob(upload.key).commit_block_list, parts,
                   content_settings=ContentSettings(content_type=CONTENT_TYPE))

    def _abort_upload(self, upload: Any) -> None:
        """Discard our uncommitted blocks by deleting the name, unless a committed blob is there.

        Uncommitted blocks are invisible either way; deleting only frees them early. Between the
        check and the delete another writer could commit the same name: that window is one round
        trip, and the alternative (keeping a week of billed blocks) is the safe default when a
        blob exists.
        """
        if upload.existed:
            return
        blob = self._blob(upload.key)
        try:
            if not blob.exists():
                blob.delete_blob()
        except ResourceNotFoundError:
            pass
        except Exception as exc:
            raise self._error(exc, upload.key) from exc

    # -- server-side copy --------------------------------------------------------------------
    def copy_from(self, other: SnapStore, src: Snapshot, dst: Snapshot) -> bool:
        """Copy inside the storage service when ``other`` is on the same account; else False."""
        peer = self._peer(other)
        if peer is None:
            return False
        src_key, dst_key = peer.object_key(src), self.object_key(dst)
        source = peer._blob(src_key)
        try:
            size = src.size
            if size is None:
                size = int(source.get_blob_properties().size)
        except Exception as exc:
            raise peer._error(exc, src_key) from exc
        if size == 0:
            self._put_small(dst_key, b"")
            return True
        now = datetime.now(timezone.utc)
        sas = generate_blob_sas(
            peer.account, peer.container_name, src_key, account_key=peer._key,
            permission=BlobSasPermissions(read=True), start=now - timedelta(minutes=5), expiry=now + COPY_SAS_LIFETIME,
        )
        source_url = f"{source.url}?{sas}"
        target = self._blob(dst_key)
        upload = self._begin_upload(dst_key)
        ranges = [(upload.block_id(n + 1), offset, min(COPY_BLOCK, size - offset))
                  for n, offset in enumerate(range(0, size, COPY_BLOCK))]

        def stage(item) -> str:
            block_id, offset, length = item
            self._retrying(dst_key, lambda: target.stage_block_from_url(block_id, source_url, source_offset=offset,
                                                            source_length=length))
            return block_id

        def commit(block_ids: list[str]) -> None:
            self._retrying(dst_key, lambda: target.commit_block_list(
                block_ids, content_settings=ContentSettings(content_type=CONTENT_TYPE)))

        try:
            self._in_parts(dst_key, upload, ranges, stage, commit)
        except PermissionDenied as exc:
            return self._copy_refused(peer, src_key, exc.reason)
        return True


def _immutable_until(blob) -> datetime | None:
    if getattr(blob, "has_legal_hold", False):
        return HELD_UNTIL
    policy = getattr(blob, "immutability_policy", None)
    expiry = getattr(policy, "expiry_time", None) if policy is not None else None
    if expiry is not None and expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=timezone.utc)
    return expiry


def _message(exc: HttpResponseError) -> str:
    """The service's one-line reason, without request ids, XML bodies or SAS signatures."""
    first = first_line(str(getattr(exc, "message", "") or exc))
    return _unsigned(first or str(getattr(exc, "reason", "") or ""))


def _unsigned(text: str) -> str:
    """``text`` without the signatures of SAS URLs (an error may quote the copy source's URL)."""
    return _SAS_SIGNATURE.sub(r"\1REDACTED", text)


def _short(exc: BaseException) -> str:
    return short_reason(exc, clean=_unsigned)
