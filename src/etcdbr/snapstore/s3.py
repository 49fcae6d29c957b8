"""Amazon S3 and S3-compatible stores (MinIO, SeaweedFS, Ceph RGW ...) through boto3.

Credentials come from ``AWS_APPLICATION_CREDENTIALS[_JSON]`` in the Go tool's layout (see
compatibility.md §1.3); with neither variable set, boto3's default chain applies (environment,
shared config, instance or pod identity). Uploads stream in multipart parts through
:class:`~.objectstore.ChunkedUpload`; nothing is spooled to disk.

Buckets with versioning enabled are listed by version (the oldest version of each key is the
snapshot, as the Go tool does) so that objects under Object Lock stay visible and are deleted by
version; a default Object Lock retention gives each snapshot its ``immutable_until``.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, BinaryIO, Iterator

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
    ResponseStreamingError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

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
from ..snapshot import Snapshot, SnapshotNameError, parse_key
from .base import ObjectAttrs, SnapStore
from .credentials import load_credentials
from .objectstore import ObjectStore
from .providers import S3, marked_excluded, short_reason
from .s3client import build_client, remove_ca_dir
from .streams import TranslatingReader

log = logging.getLogger(__name__)

#: Largest object CopyObject accepts; bigger ones are copied part by part.
MAX_SINGLE_COPY = 5 * 1024**3
#: Part size of server-side multipart copies (no data passes through us, so parts can be big).
COPY_PART_SIZE = 512 * 1024**2
# Multipart uploads older than this under our prefix were abandoned by a killed process.
STALE_UPLOAD = timedelta(hours=24)

_NOT_FOUND_CODES = {"NoSuchKey", "NotFound", "NoSuchVersion", "404"}
_DENIED_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "ExpiredToken",
    "InvalidToken", "TokenRefreshRequired", "AccountProblem", "403", "Forbidden",
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError",
    "ServiceUnavailable", "503", "500", "502", "504", "OperationAborted", "RequestLimitExceeded",
}


class S3Store(ObjectStore):
    provider = S3

    def __init__(self, config) -> None:
        super().__init__(config)
        creds = load_credentials(config, "AWS")
        self.credentials = creds
        values = creds.values if creds else {}
        for secret_key in ("secretAccessKey", "sseCustomerKey", "accessKeyID"):
            logs.register_secret(values.get(secret_key))
        self.bucket = config.container or str(values.get("bucketName") or "")
        if not self.bucket:
            raise ConfigError("S3 needs a bucket: set --store-container or bucketName in the S3 credentials")
        self.endpoint_url = config.endpoint_override or str(values.get("endpoint") or "")
        self.region = str(values.get("region") or "") or None
        self._sse: dict[str, str] = {}
        if values.get("sseCustomerKey"):
            self._sse = {
                "SSECustomerKey": str(values["sseCustomerKey"]),
                "SSECustomerAlgorithm": str(values.get("sseCustomerAlgorithm") or "AES256"),
            }
        elif values.get("sseCustomerAlgorithm"):
            raise ConfigError("S3 credentials set sseCustomerAlgorithm without sseCustomerKey")
        # _ca_dir: the private directory of the CA bundle the client trusts (trustedCaCert), or None.
        self.client, self.region, self._ca_dir = build_client(
            values, creds is not None, region=self.region, endpoint_url=self.endpoint_url,
            connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
            pool_size=max(10, config.max_parallel_chunk_uploads * 2 + 2), temp_dir=config.temp_dir)

    def close(self) -> None:
        self._close_client(self.client)
        remove_ca_dir(self._ca_dir)
        self._ca_dir = None

    # -- naming ------------------------------------------------------------------------------
    @property
    def display(self) -> str:
        return f"S3/{self.bucket}"

    @property
    def endpoint_display(self) -> str:
        return self.endpoint_url or f"AWS S3 ({self.region})"

    @property
    def service_identity(self) -> tuple:
        # Without an override every bucket is on AWS, and CopyObject works across regions.
        return ("S3", self.endpoint_url.rstrip("/") if self.endpoint_url else "aws")

    # -- errors ------------------------------------------------------------------------------
    def _error(self, exc: BaseException, key: str = "", *, bucket: str | None = None) -> EtcdbrError:
        """Map one botocore failure to our error family (the only place that knows botocore's)."""
        endpoint = self.display if bucket in (None, self.bucket) else f"S3/{bucket}"
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {}) or {}
            code = str(err.get("Code", "") or "")
            status = int((exc.response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", 0) or 0)
            message = str(err.get("Message", "") or "") or code or f"HTTP {status}"
            detail = f"{message} ({code})" if code and code not in message else message
            if code == "NoSuchBucket":
                return StoreError(f"bucket does not exist at {self.endpoint_display}", endpoint=endpoint, key=key)
            if code in _NOT_FOUND_CODES or (status == 404 and not code):
                return ObjectNotFound("no such object", endpoint=endpoint, key=key)
            if code in _DENIED_CODES or status == 403:
                return PermissionDenied(f"access refused by {self.endpoint_display}: {detail}",
                                        endpoint=endpoint, key=key)
            if code in _TRANSIENT_CODES or status >= 500 or status == 429:
                return StoreUnavailable(f"{self.endpoint_display} answered {detail}", endpoint=endpoint, key=key)
            if status == 404:
                return ObjectNotFound(detail, endpoint=endpoint, key=key)
            return StoreError(f"{self.endpoint_display} refused the request: {detail}", endpoint=endpoint, key=key)
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return ConfigError(
                f"{endpoint}: no usable AWS credentials ({exc}); set AWS_APPLICATION_CREDENTIALS_JSON "
                "or AWS_APPLICATION_CREDENTIALS"
            )
        if isinstance(exc, SSLError):
            return StoreError(f"TLS with {self.endpoint_display} failed ({exc}); check trustedCaCert or "
                              "insecureSkipVerify", endpoint=endpoint, key=key)
        if isinstance(exc, (ReadTimeoutError, ConnectTimeoutError)):
            return StoreUnavailable(self._timed_out(self.endpoint_display, isinstance(exc, ConnectTimeoutError)),
                                    endpoint=endpoint, key=key)
        if isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, IncompleteReadError,
                            ResponseStreamingError, OSError)):
            return StoreUnavailable(f"cannot reach {self.endpoint_display} ({_short(exc)})", endpoint=endpoint, key=key)
        if isinstance(exc, BotoCoreError):
            return StoreError(f"{self.endpoint_display}: {exc}", endpoint=endpoint, key=key)
        return StoreUnavailable(f"{type(exc).__name__}: {exc}", endpoint=endpoint, key=key)

    # -- primitives --------------------------------------------------------------------------
    def _check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if status == 404 or code in ("NoSuchBucket", "NotFound", "404"):
                raise StoreError(f"bucket {self.bucket!r} does not exist at {self.endpoint_display}",
                                 endpoint=self.display) from exc
            if status == 403 or code in _DENIED_CODES:
                raise PermissionDenied(f"credentials refused by {self.endpoint_display} (HTTP {status or code})",
                                       endpoint=self.display) from exc
            raise self._error(exc) from exc
        except Exception as exc:
            raise self._error(exc) from exc

    def _sweep_leftovers(self) -> None:
        self._abort_stale_uploads()

    def _abort_stale_uploads(self) -> None:
        """Abort multipart uploads under our prefix that a killed process left behind (best effort).

        They are never listed as snapshots, but their parts are billed until aborted. Only uploads
        older than :data:`STALE_UPLOAD` are touched, so a live upload of another process is safe.
        """
        cutoff = datetime.now(timezone.utc) - STALE_UPLOAD
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.list_root())
            # Only keys that name snapshots are ours, even when the bucket is shared with others.
            stale = [(u["Key"], u["UploadId"]) for page in pages for u in page.get("Uploads", [])
                     if u.get("Initiated") is not None and _utc(u["Initiated"]) < cutoff and _is_snapshot_key(u["Key"])]
        except Exception as exc:  # noqa: BLE001 - best effort, e.g. without s3:ListBucketMultipartUploads
            log.debug("could not list abandoned multipart uploads",
                      extra={"store": self.display, "error": str(self._error(exc))})
            return
        for key, upload_id in stale:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
                log.info("aborted an abandoned multipart upload", extra={"store": self.display, "key": key})
            except Exception as exc:  # noqa: BLE001 - best effort: the next sweep tries again
                log.warning("could not abort an abandoned multipart upload",
                            extra={"store": self.display, "key": key, "error": str(self._error(exc, key))})

    def _bucket_state(self) -> tuple[bool, timedelta | None]:
        """(versioning enabled, default Object Lock retention). Unknown (no permission) = off."""
        versioned, retention = False, None
        try:
            versioned = self.client.get_bucket_versioning(Bucket=self.bucket).get("Status") == "Enabled"
        except ClientError as exc:
            mapped = self._error(exc)
            if not isinstance(mapped, PermissionDenied):
                raise mapped from exc
            log.debug("cannot read bucket versioning; listing objects", extra={"store": self.display})
        except Exception as exc:
            raise self._error(exc) from exc
        if not versioned:
            return False, None
        try:
            conf = self.client.get_object_lock_configuration(Bucket=self.bucket).get("ObjectLockConfiguration", {})
            default = (conf.get("Rule") or {}).get("DefaultRetention") or {}
            if conf.get("ObjectLockEnabled") == "Enabled":
                if default.get("Days"):
                    retention = timedelta(days=int(default["Days"]))
                elif default.get("Years"):
                    retention = timedelta(days=365 * int(default["Years"]))
        except ClientError as exc:
            mapped = self._error(exc)
            if isinstance(mapped, StoreUnavailable):
                raise mapped from exc
            # ObjectLockConfigurationNotFoundError, or no permission: no retention known.
        except Exception as exc:
            raise self._error(exc) from exc
        return True, retention

    def _list_objects(self, prefix: str, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        versioned, retention = self._bucket_state()
        if versioned:
            yield from self._list_versions(prefix, retention, include_all)
            return
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", ()) or ():
                yield obj["Key"], ObjectAttrs(size=obj.get("Size"))

    def _list_versions(self, prefix: str, retention: timedelta | None, include_all: bool):
        oldest: dict[str, dict] = {}
        deleted: set[str] = set()
        for page in self.client.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=prefix):
            for version in page.get("Versions", ()) or ():
                current = oldest.get(version["Key"])
                if current is None or version["LastModified"] < current["LastModified"]:
                    oldest[version["Key"]] = version
            for marker in page.get("DeleteMarkers", ()) or ():
                if marker.get("IsLatest"):
                    deleted.add(marker["Key"])
        for key in sorted(oldest):
            version = oldest[key]
            # "null" names the version written before versioning was enabled; S3 accepts it as an id.
            version_id = version.get("VersionId") or ""
            # A key hidden by a delete marker is still a snapshot (the locked version remains),
            # unless it was marked for exclusion when it was deleted.
            if key in deleted and not include_all and self._excluded(key, version_id):
                continue
            until = None
            if retention is not None and version.get("LastModified") is not None:
                # The lock runs from when the object was written (the Go tool counts from the time
                # in the name); for a copy that is later, and GC must not try to delete too early.
                until = _utc(version["LastModified"]) + retention
            yield key, ObjectAttrs(size=version.get("Size"), immutable_until=until, version_id=version_id)

    def _excluded(self, key: str, version_id: str) -> bool:
        kwargs = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            tags = self.client.get_object_tagging(**kwargs).get("TagSet", [])
        except ClientError:
            return False
        return marked_excluded({t.get("Key"): t.get("Value") for t in tags})

    def _open_read(self, key: str, version_id: str = "") -> BinaryIO:
        kwargs = {"Bucket": self.bucket, "Key": key}
        if version_id:
            kwargs["VersionId"] = version_id
        try:
            response = self.client.get_object(**kwargs, **self._sse)
        except ClientError as exc:
            # 400 to SSE-C headers: an object written before the key was configured.
            if not (self._sse and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400):
                raise self._error(exc, key) from exc
            response = self._call(key, self.client.get_object, **kwargs)
        except Exception as exc:
            raise self._error(exc, key) from exc
        return io.BufferedReader(TranslatingReader(response["Body"], self, key), buffer_size=1024 * 1024)

    def _delete_object(self, key: str, version_id: str = "") -> None:
        target = {"Bucket": self.bucket, "Key": key}
        if version_id:
            target["VersionId"] = version_id
        # S3 answers a delete of a missing key with success; the contract wants ObjectNotFound.
        self._head(target, key)
        try:
            self.client.delete_object(**target)
        except ClientError as exc:
            mapped = self._error(exc, key)
            if isinstance(mapped, PermissionDenied) and self._is_locked(target, key):
                raise ImmutableObject("deletion refused: the object is under Object Lock retention or legal hold",
                                      endpoint=self.display, key=key) from exc
            raise mapped from exc
        except Exception as exc:
            raise self._error(exc, key) from exc

    def _head(self, target: dict, key: str) -> dict:
        """HeadObject that works for objects with and without SSE-C (a bucket can hold both
        when the key was configured after the first snapshots were written)."""
        try:
            return self.client.head_object(**target)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if not (self._sse and status == 400):
                raise self._error(exc, key) from exc
        except Exception as exc:
            raise self._error(exc, key) from exc
        return self._call(key, self.client.head_object, **target, **self._sse)

    def _is_locked(self, target: dict, key: str) -> bool:
        try:
            head = self._head(target, key)
        except StoreError:
            return False
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and _utc(until) > datetime.now(timezone.utc):
            return True
        return head.get("ObjectLockLegalHoldStatus") == "ON"

    def _put_small(self, key: str, data: bytes) -> None:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=key, Body=data, **self._sse)

    def _begin_upload(self, key: str) -> Any:
        response = self._call(key, self.client.create_multipart_upload, Bucket=self.bucket, Key=key, **self._sse)
        return {"key": key, "upload_id": response["UploadId"]}

    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        response = self._call(
            upload["key"], self.client.upload_part, Bucket=self.bucket, Key=upload["key"],
            UploadId=upload["upload_id"], PartNumber=number, Body=data, **self._sse,
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _complete_upload(self, upload: Any, parts: list[Any]) -> None:
        self._call(
            upload["key"], self.client.complete_multipart_upload, Bucket=self.bucket, Key=upload["key"],
            UploadId=upload["upload_id"], MultipartUpload={"Parts": parts},
        )

    def _abort_upload(self, upload: Any) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["key"], UploadId=upload["upload_id"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404", "NotFound"):
                return
            raise self._error(exc, upload["key"]) from exc
        except Exception as exc:
            raise self._error(exc, upload["key"]) from exc

    # -- server-side copy --------------------------------------------------------------------
    def copy_from(self, other: SnapStore, src: Snapshot, dst: Snapshot) -> bool:
        """Copy inside the S3 service when ``other`` is on the same one; False to make the caller stream.

        The copy is made with this store's credentials, so they must be able to read the source
        bucket; when the service refuses (403), False lets the caller fall back to streaming.
        """
        peer = self._peer(other)
        if peer is None:
            return False
        src_key, dst_key = peer.object_key(src), self.object_key(dst)
        source = {"Bucket": peer.bucket, "Key": src_key}
        if src.version_id:
            source["VersionId"] = src.version_id
        source_sse = {f"CopySource{k}": v for k, v in peer._sse.items()}
        try:
            size = src.size
            if size is None:
                size = int(peer._head(source, src_key)["ContentLength"])
            if size <= MAX_SINGLE_COPY:
                self._retrying(dst_key, lambda: self.client.copy_object(
                    Bucket=self.bucket, Key=dst_key, CopySource=source, **source_sse, **self._sse))
            else:
                self._multipart_copy(source, source_sse, dst_key, size)
        except PermissionDenied as exc:
            return self._copy_refused(peer, src_key, exc.reason)
        except ClientError as exc:
            mapped = self._error(exc, src_key, bucket=peer.bucket)
            if isinstance(mapped, PermissionDenied):
                return self._copy_refused(peer, src_key, mapped.reason)
            raise mapped from exc
        except StoreError:
            raise
        except Exception as exc:
            raise self._error(exc, src_key, bucket=peer.bucket) from exc
        return True

    def content_fingerprint(self, snapshot: Snapshot) -> tuple[int, str] | None:
        """Size and ETag. The ETag is the MD5 of the content (or of the part MD5s, "-N") except
        under SSE-C or SSE-KMS, where it is not derived from the content and None is returned."""
        if self._sse:
            return None
        key = self.object_key(snapshot)
        target = {"Bucket": self.bucket, "Key": key}
        if snapshot.version_id:
            target["VersionId"] = snapshot.version_id
        head = self._head(target, key)
        if head.get("SSECustomerAlgorithm") or head.get("ServerSideEncryption") == "aws:kms":
            return None
        etag = str(head.get("ETag") or "").strip('"')
        return (int(head["ContentLength"]), etag) if etag else None

    def _multipart_copy(self, source: dict, source_sse: dict, dst_key: str, size: int) -> None:
        part_size = max(COPY_PART_SIZE, -(-size // self.max_parts))
        ranges = [(n + 1, start, min(start + part_size, size) - 1) for n, start in enumerate(range(0, size, part_size))]
        upload = self._retrying(dst_key, lambda: self._begin_upload(dst_key))

        def copy_part(item):
            number, first, last = item
            response = self._retrying(dst_key, lambda: self.client.upload_part_copy(
                Bucket=self.bucket, Key=dst_key, UploadId=upload["upload_id"], PartNumber=number,
                CopySource=source, CopySourceRange=f"bytes={first}-{last}", **source_sse, **self._sse))
            return {"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]}

        self._in_parts(dst_key, upload, ranges, copy_part,
                       lambda parts: self._retrying(dst_key, lambda: self._complete_upload(upload, parts)))


def _is_snapshot_key(key: str) -> bool:
    try:
        parse_key(key)
    except SnapshotNameError:
        return False
    return True


def _utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _short(exc: BaseException) -> str:
    """botocore connection errors repeat the URL and nest the cause; keep one readable clause."""
    details = getattr(exc, "kwargs", None)
    inner = details.get("error") if isinstance(details, dict) else None
    return short_reason(exc, detail=str(inner or ""))
