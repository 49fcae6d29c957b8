"""Moving one snapshot from the primary to the secondary, and proving the copy equal.

Runs in the copier's worker threads. Every store call here says whose failure it is
(:class:`EndpointFailure`), so that an outage is blamed on the endpoint that has it: the primary's
read failing inside the secondary's save is the primary's.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from typing import BinaryIO

from ..errors import (
    ConfigError,
    ImmutableObject,
    IntegrityError,
    ObjectNotFound,
    PermissionDenied,
    StoreError,
    StoreUnavailable,
)
from ..logs import redact
from ..snapshot import Snapshot
from ..snapstore import SnapStore
from ..snapstore.streams import ByteStream, HashingReader
from .plan import destination_for

log = logging.getLogger("etcdbr.copier")

#: Read size of the verification hashes: 10 concurrent copies each hold about two of these (1 MiB
#: blocks: peak RSS 106 MiB copying 200 x 4 MiB; 256 KiB: 100 MiB, no slower).
READ_BLOCK = 256 * 1024
PRIMARY, SECONDARY = "primary", "secondary"


class CopyCancelled(Exception):
    """Raised from inside a copy's read when the copier stops; the store aborts its upload."""


class SourceGone(Exception):
    """The snapshot was deleted from the primary (by its GC) after the listing: nothing to copy."""


class EndpointFailure(Exception):
    """A store call of one endpoint failed during a copy: ``role`` says whose, ``cause`` what."""

    def __init__(self, role: str, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.role = role
        self.cause = cause


def on_endpoint(role: str, fn, *args):
    """``fn(*args)`` with any failure of the store attributed to ``role``."""
    try:
        return fn(*args)
    except (CopyCancelled, SourceGone, EndpointFailure, IntegrityError, ObjectNotFound):
        raise
    except Exception as exc:
        raise EndpointFailure(role, exc) from exc


class CancellableReader(io.RawIOBase):
    """The primary's stream as the secondary's save reads it: stops with the copier, and a read
    failure is the primary's (the save would otherwise look like the secondary's failure)."""

    def __init__(self, raw: ByteStream, stopping: threading.Event) -> None:
        self.raw = raw
        self.stopping = stopping

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.stopping.is_set():
            raise CopyCancelled("copier stopping")
        try:
            return self.raw.read(size) if size is not None and size >= 0 else self.raw.read()
        except (CopyCancelled, EndpointFailure):
            raise
        except Exception as exc:
            raise EndpointFailure(PRIMARY, exc) from exc

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


def digest(stream: BinaryIO, stopping: threading.Event) -> tuple[int, str]:
    hasher, count = hashlib.sha256(), 0
    with stream:
        while True:
            if stopping.is_set():
                raise CopyCancelled("copier stopping")
            block = stream.read(READ_BLOCK)
            if not block:
                break
            hasher.update(block)
            count += len(block)
    return count, hasher.hexdigest()


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return redact(exc.reason)
    return redact(str(exc) or type(exc).__name__)


def is_outage(exc: BaseException) -> bool:
    """Does this failure say the endpoint itself cannot be used (rather than one object)?"""
    return not isinstance(exc, (ObjectNotFound, ImmutableObject, IntegrityError, CopyCancelled, SourceGone))


def retryable(exc: BaseException) -> bool:
    # Facts about the request (missing, refused, locked, misconfigured) do not change on retry;
    # transport failures and a copy that failed verification may.
    if isinstance(exc, (ObjectNotFound, PermissionDenied, ImmutableObject, ConfigError, CopyCancelled)):
        return False
    if isinstance(exc, StoreError):
        return isinstance(exc, StoreUnavailable)
    return True


class VerifiedTransfer:
    """Copies snapshots from ``primary`` to ``secondary`` and verifies each copy (blocking calls,
    for worker threads). ``verify`` is ``--backup-sync-verify``; ``stopping`` aborts reads."""

    def __init__(self, primary: SnapStore, secondary: SnapStore, verify: str, stopping: threading.Event) -> None:
        self.primary = primary
        self.secondary = secondary
        self.verify = verify
        self._stopping = stopping

    def remove_differing(self, snap: Snapshot) -> None:
        try:
            self.secondary.delete(snap)
        except ObjectNotFound:
            pass
        log.warning("replaced a secondary copy whose size differed from the primary's",
                    extra={"snapshot": snap.snap_name})

    def copy(self, src: Snapshot) -> int:
        """Copy one snapshot and verify it; returns its size. Runs in a worker thread."""
        dst = destination_for(src, self.secondary.prefix)
        expected: tuple[int, str] | None = None
        server_side = False
        if self.primary.service_identity == self.secondary.service_identity:
            try:
                server_side = self.secondary.copy_from(self.primary, src, dst)
            except ObjectNotFound as exc:  # only the source can be missing in a copy
                raise SourceGone(str(exc)) from exc
            except Exception as exc:  # the secondary's service performs the copy
                raise EndpointFailure(SECONDARY, exc) from exc
        if server_side and self.verify == "metadata":
            vouched = self._vouched_size(src, dst)
            if vouched is not None:
                log.debug("copied snapshot; the service reports the same size and digest for both objects",
                          extra={"snapshot": src.snap_name, "bytes": vouched, "server_side": True})
                return vouched
        if server_side:
            expected = on_endpoint(PRIMARY, lambda: digest(self._fetch_source(src), self._stopping))
        else:
            hasher = hashlib.sha256()
            reader = HashingReader(CancellableReader(self._fetch_source(src), self._stopping), hasher)
            with reader:
                on_endpoint(SECONDARY, self.secondary.save, dst, reader)
            expected = (reader.count, hasher.hexdigest())
        try:
            if src.size is not None and expected[0] != src.size:
                raise IntegrityError(f"read {expected[0]} bytes from the primary but its listing says {src.size}")
            actual = on_endpoint(SECONDARY, lambda: digest(self.secondary.fetch(dst), self._stopping))
            if actual != expected:
                raise IntegrityError(
                    f"verification failed: secondary has {actual[0]} bytes sha256 {actual[1][:16]}…, "
                    f"primary has {expected[0]} bytes sha256 {expected[1][:16]}…")
        except IntegrityError:
            self._discard(dst)
            raise
        log.debug("copied and verified snapshot", extra={"snapshot": src.snap_name, "bytes": expected[0],
                                                         "server_side": server_side})
        return expected[0]

    def _vouched_size(self, src: Snapshot, dst: Snapshot) -> int | None:
        """``--backup-sync-verify=metadata``: the copy's size when the service reports the same
        size and content digest for source and copy (and the size is the listing's); None means
        verify by content."""
        try:
            theirs = on_endpoint(PRIMARY, self.primary.content_fingerprint, src)
            ours = on_endpoint(SECONDARY, self.secondary.content_fingerprint, dst)
        except ObjectNotFound:
            return None
        if theirs is None or ours is None:
            return None
        if theirs != ours or (src.size is not None and ours[0] != src.size):
            log.info("the service's size or digest of a copy differs from the primary's; verifying by content",
                     extra={"snapshot": src.snap_name, "primary": list(theirs), "secondary": list(ours)})
            return None
        return ours[0]

    def _fetch_source(self, src: Snapshot) -> BinaryIO:
        try:
            return self.primary.fetch(src)
        except ObjectNotFound as exc:
            raise SourceGone(str(exc)) from exc
        except Exception as exc:
            raise EndpointFailure(PRIMARY, exc) from exc

    def _discard(self, dst: Snapshot) -> None:
        try:
            self.secondary.delete(dst)
        except ObjectNotFound:
            pass
        except Exception as exc:  # noqa: BLE001 - logged; the verification failure is what the caller raises
            log.error("could not delete a copy that failed verification",
                      extra={"snapshot": dst.snap_name, "error": failure_reason(exc)})
