"""What the providers share: their names, where each one lives and which extra installs its SDK,
their part limits, the markers they put on objects, and how an SDK's failure is cut to one clause.

This module imports nothing of the project: ``config`` takes the provider names from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

LOCAL, S3, GCS, ABS = "Local", "S3", "GCS", "ABS"
#: The values of ``--storage-provider`` (case-sensitive, as in the Go tool).
PROVIDERS = (LOCAL, S3, GCS, ABS)
#: The Go tool knows these too; errors name them so an operator knows why they are refused.
UNSUPPORTED_PROVIDERS = ("Swift", "OSS", "ECS", "OCS")


@dataclass(frozen=True)
class Provider:
    """Where a provider's store lives, and what it needs installed."""

    module: str
    cls: str
    #: The extra of the distribution that installs the provider's SDK (None: nothing to install).
    extra: str | None = None
    #: Largest number of parts of one upload (the service's limit); the part size grows to respect it.
    max_parts: int = 10_000
    #: Smallest part the service accepts except for the last one.
    min_part_size: int = 1


IMPLEMENTATIONS = {
    LOCAL: Provider("etcdbr.snapstore.local", "LocalStore"),
    S3: Provider("etcdbr.snapstore.s3", "S3Store", "s3", max_parts=10_000, min_part_size=5 * 1024 * 1024),
    # Composite objects have no component limit today; doubling the part size past ~1250 parts
    # keeps the number of composes (one per 31 parts) reasonable. Compose takes parts of any size.
    GCS: Provider("etcdbr.snapstore.gcs", "GCSStore", "gcs", max_parts=10_000, min_part_size=1),
    # Blocks may be of any size up to 4000 MiB.
    ABS: Provider("etcdbr.snapstore.abs", "ABSStore", "abs", max_parts=50_000, min_part_size=1),
}


# -- what the object stores put on or read from objects -----------------------------------------
#: Tag (S3, ABS) or metadata key (GCS) that hides a deleted snapshot from listings, as the Go tool sets it.
EXCLUDE_TAG = "x-etcd-snapshot-exclude"
#: ``immutable_until`` of an object under a hold that has no expiry (GCS holds, ABS legal holds).
HELD_UNTIL = datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
CONTENT_TYPE = "application/octet-stream"
#: Objects asked for per listing request.
LIST_PAGE = 1000
#: Where uploads in progress keep their pieces, beside the snapshot tree (Local, GCS).
STAGING_DIR = ".etcdbr-staging"


def marked_excluded(labels: dict | None) -> bool:
    """Do an object's tags (or metadata) carry the Go tool's exclusion mark?"""
    return str((labels or {}).get(EXCLUDE_TAG, "")).lower() == "true"


# -- error shortening ---------------------------------------------------------------------------
#: What SDKs and urllib3 say about a failed connection, in many words, and what we say.
CONNECTION_FAILURES = (
    ("Connection refused", "connection refused"),
    ("timed out", "timed out"),
    ("Name or service not known", "unknown host"),
    ("Temporary failure in name resolution", "unknown host"),
    ("Connection reset", "connection reset"),
    ("No route to host", "no route to host"),
    ("Remote end closed connection", "remote end closed connection"),
)


def first_line(exc: BaseException | str) -> str:
    """The first line of an error (or of a text), or the error's type when it says nothing."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


def short_reason(exc: BaseException, *, detail: str = "", clean=lambda text: text) -> str:
    """One readable clause for a connection failure: SDK errors nest their causes and repeat URLs.

    ``detail`` is more text to search for the cause (an SDK's nested error); ``clean`` removes what
    must never be shown (a signed URL's signature) before anything is kept.
    """
    text = clean(f"{exc} {detail}")
    for marker, say in CONNECTION_FAILURES:
        if marker in text:
            return say
    return first_line(clean(str(exc))) or type(exc).__name__
