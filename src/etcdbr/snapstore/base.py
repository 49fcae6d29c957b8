"""The snapstore protocol and the machinery every provider shares.

Contract of a store (what callers may rely on, whatever the provider):

* ``list()`` returns every snapshot under the store's prefix, sorted (see ``snapshot.sort_key``).
  An unreachable store raises :class:`StoreUnavailable`; it never answers "empty" on error.
* ``save(snapshot, stream)`` reads the stream to its end and makes the object visible only once
  complete: a failed save leaves nothing listed (multipart aborted, staged blocks uncommitted,
  temp files removed). Memory is bounded by ``min_chunk_size * max_parallel_chunk_uploads``.
* ``fetch(snapshot)`` returns a readable binary stream; the caller closes it. A missing object
  raises :class:`ObjectNotFound`.
* ``delete(snapshot)`` removes the object; :class:`ImmutableObject` when retention forbids it,
  :class:`ObjectNotFound` when already gone.
* ``copy_from(other, src, dst)`` performs a server-side copy when ``other`` lives on the same
  service, and returns False when it cannot (the caller then streams the bytes).

Providers fill in a few object-level primitives; chunking, parallelism and retries live here once.

Credentials rotated on disk are picked up without a restart: a provider that keeps the loaded
:class:`~.credentials.Credentials` in ``self.credentials`` is rebuilt from its config before the
next public call once the credential files' fingerprint changes (see :meth:`SnapStore._reload_if_rotated`).
"""

from __future__ import annotations

import abc
import functools
import io
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..config import StoreConfig
from ..errors import EtcdbrError, StoreError, StoreUnavailable
from ..snapshot import Snapshot, parse_listing

log = logging.getLogger(__name__)

#: How often one provider SDK tries one request (S3 and ABS: 1 retry; GCS retries by deadline).
SDK_ATTEMPTS = 2
#: How often we try one part of an upload (or one step of a server-side copy) on StoreUnavailable;
#: each try is one SDK call, so a part makes at most PART_ATTEMPTS x SDK_ATTEMPTS requests.
PART_ATTEMPTS = 3
_RELOAD_LOCK = threading.Lock()
#: Longest wait for a TCP (and TLS) connection; --store-timeout when that is shorter.
CONNECT_TIMEOUT = 10.0


@dataclass
class ObjectAttrs:
    """What a listing knows about one object besides its key."""

    size: int | None = None
    immutable_until: Any = None
    version_id: str = ""

    def as_dict(self) -> dict:
        return {"size": self.size, "immutable_until": self.immutable_until, "version_id": self.version_id or None}


@dataclass
class Leftover:
    """What an upload interrupted mid-way (a killed process) left in a store's staging area."""

    key: str
    age: float                 # seconds since it was last written
    size: int | None = None
    abandoned: bool = False    # old enough (and unlocked) that the next start's sweep removes it


#: Public calls before which rotated credentials are picked up.
_RELOADING_CALLS = ("check", "list", "save", "fetch", "delete", "copy_from", "content_fingerprint")
#: Old client states kept open after a rotation, for calls still running on them.
_RETIRED_KEPT = 2


def _reloading(fn):
    if getattr(fn, "_reloads_credentials", False):
        return fn

    @functools.wraps(fn)
    def call(self, *args, **kwargs):
        self._reload_if_rotated()
        return fn(self, *args, **kwargs)

    call._reloads_credentials = True
    return call


def _baselining(init):
    @functools.wraps(init)
    def construct(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if type(self).__init__ is construct:  # only the outermost constructor takes the baseline
            creds = getattr(self, "credentials", None)
            self._creds_fingerprint = creds.fingerprint() if creds is not None else None

    construct._baselines = True
    return construct


def _closing(close):
    @functools.wraps(close)
    def call(self, *args, **kwargs):
        try:
            return close(self, *args, **kwargs)
        finally:
            self._close_retired()

    call._closes_retired = True
    return call


class SnapStore(abc.ABC):
    """Base of every provider. Thread-safe: the copier and the snapshotter share one instance."""

    provider: str = ""
    #: Instance attributes a credential reload keeps (tuning set after construction).
    _keep_on_reload: tuple[str, ...] = ("_part_retry_wait",)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        for name in _RELOADING_CALLS:
            if name in cls.__dict__:
                setattr(cls, name, _reloading(cls.__dict__[name]))
        if "__init__" in cls.__dict__ and not getattr(cls.__dict__["__init__"], "_baselines", False):
            cls.__init__ = _baselining(cls.__dict__["__init__"])
        if "close" in cls.__dict__ and not getattr(cls.__dict__["close"], "_closes_retired", False):
            cls.close = _closing(cls.__dict__["close"])
    #: Largest number of parts an upload may have (provider limit); part size grows to respect it.
    max_parts: int = 10_000
    #: Smallest part the provider accepts except for the last one.
    min_part_size: int = 5 * 1024 * 1024

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.prefix = config.prefix_v2
        self._part_retry_wait = wait_exponential(multiplier=1, min=1, max=16)

    @property
    def request_timeout(self) -> float:
        """``--store-timeout``: the longest wait for the service on one request, in seconds."""
        return max(0.1, self.config.timeout.total_seconds())

    @property
    def connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.request_timeout)

    def _timed_out(self, where: str, connecting: bool = False) -> str:
        """The reason of a request that ran into its timeout, naming the flag that sets it."""
        flag = {"SECONDARY_": "--secondary-", "SOURCE_": "--source-"}.get(self.config.env_prefix, "--") + "store-timeout"
        if connecting:
            return f"could not connect to {where} within {self.connect_timeout:g}s"
        return f"{where} did not answer within {self.request_timeout:g}s ({flag})"

    # -- naming ------------------------------------------------------------------------------
    @property
    def display(self) -> str:
        """``S3/bucket``: the endpoint as operators see it in logs."""
        return f"{self.provider}/{self.config.container}"

    @property
    def service_identity(self) -> tuple:
        """Two stores with equal identities can copy server-side."""
        return (self.provider, self.config.endpoint_override)

    def object_key(self, snapshot: Snapshot) -> str:
        return snapshot.key

    def list_root(self) -> str:
        """List the parent of ``<prefix>/v2`` so that both the v1 and v2 trees are seen."""
        parent = self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else ""
        return parent + "/" if parent else ""

    # -- public protocol ---------------------------------------------------------------------
    def check(self, sweep: bool = True) -> None:
        """Verify the container is reachable with these credentials; raise a StoreError if not.

        With ``sweep`` (commands that write: server, snapshot, copy, restore), also remove what
        uploads killed mid-way left behind, once it is old enough that no live upload can own it
        (each provider's rule is in its module). Read-only commands (verify, snapshot list) pass
        False and leave the store as they found it.
        """
        self._check()
        if sweep:
            self._sweep_leftovers()

    def list(self, include_all: bool = False) -> list[Snapshot]:
        entries = ((key, attrs.as_dict()) for key, attrs in self._list_objects(self.list_root()))
        return parse_listing(entries, endpoint=self.display)

    def save(self, snapshot: Snapshot, stream: BinaryIO) -> int:
        """Upload ``stream`` as ``snapshot``; returns the number of bytes stored."""
        return ChunkedUpload(self, self.object_key(snapshot)).run(stream)

    def fetch(self, snapshot: Snapshot) -> BinaryIO:
        return self._open_read(self.object_key(snapshot))

    def delete(self, snapshot: Snapshot) -> None:
        self._delete_object(self.object_key(snapshot), snapshot.version_id)

    def copy_from(self, other: "SnapStore", src: Snapshot, dst: Snapshot) -> bool:
        return False

    def _copy_refused(self, other: "SnapStore", src_key: str, reason: str) -> bool:
        """Log that the service refused a server-side copy (the credentials of this store cannot
        read the source); False tells the copier to stream the bytes instead."""
        log.info("server-side copy refused; streaming instead",
                 extra={"store": self.display, "source": other.display, "key": src_key, "error": reason})
        return False

    def content_fingerprint(self, snapshot: Snapshot) -> tuple[int, str] | None:
        """(size, digest) as the service reports them for the stored object, where the digest
        is derived from the content and a server-side copy of the object reports the same one;
        None when this provider (or this object's encryption) offers no such digest."""
        return None

    def close(self) -> None:
        """Release clients and pools."""

    def staging_leftovers(self) -> list[Leftover]:
        """Pieces of interrupted uploads in this store's staging area (``verify`` reports them)."""
        return []

    def _sweep_leftovers(self) -> None:
        """Remove abandoned upload leftovers; best effort, never raises."""

    # -- credential rotation -----------------------------------------------------------------
    def _reload_if_rotated(self) -> None:
        """Rebuild this store's clients when its credential files changed since they were read.

        Kubernetes rotates a secret by swapping the files of its volume; the Go tool polls their
        mtimes and rebuilds its client, so must we, or every call fails once the old key is
        revoked. The store is rebuilt whole from its config (the provider's own constructor reads
        the new files, registers the new secrets for masking and validates them) and its state is
        adopted in place, so every holder of this instance sees the new credentials. Files that
        cannot be used (half written, malformed) keep the previous credentials, with one warning
        per change. Clients of the previous state stay open for calls still running on them.
        """
        creds = self.__dict__.get("credentials")
        if creds is None or not getattr(creds, "sources", None):
            return
        current = creds.fingerprint()
        if current == self.__dict__.get("_creds_fingerprint") or current == self.__dict__.get("_creds_refused"):
            return
        with _RELOAD_LOCK:
            if self.__dict__.get("credentials") is not creds:
                return  # another thread reloaded meanwhile
            try:
                fresh = type(self)(self.config)
            except EtcdbrError as exc:
                self._creds_refused = current
                log.warning("credentials changed but cannot be used; keeping the previous ones",
                            extra={"store": self.display, "error": str(exc)})
                return
            old_state = dict(self.__dict__)
            kept = {k: old_state[k] for k in self._keep_on_reload if k in old_state}
            retired = old_state.pop("_retired_states", [])
            self.__dict__.update(fresh.__dict__)
            self.__dict__.update(kept)
            retired.append(old_state)
            while len(retired) > _RETIRED_KEPT:
                self._close_state(retired.pop(0))
            self._retired_states = retired
            self._creds_generation = old_state.get("_creds_generation", 0) + 1
        log.info("credentials changed; store clients rebuilt", extra={"store": self.display})

    @property
    def credentials_generation(self) -> int:
        """How many rotations of the credential files this store has taken up; the files are
        checked (and a rotation taken up) first. The snapshotter takes a new full snapshot when
        it changes, as the Go tool does: new credentials may well mean a new account."""
        self._reload_if_rotated()
        return self.__dict__.get("_creds_generation", 0)

    def _close_state(self, state: dict) -> None:
        shell = object.__new__(type(self))
        shell.__dict__.update(state)
        shell.__dict__.pop("_retired_states", None)
        try:
            shell.close()
        except Exception as exc:  # best effort: it only frees connections
            log.debug("could not close a retired store client", extra={"store": self.display, "error": str(exc)})

    def _close_retired(self) -> None:
        for state in self.__dict__.pop("_retired_states", []):
            self._close_state(state)

    # -- error translation -------------------------------------------------------------------
    def _error(self, exc: BaseException, key: str = "") -> EtcdbrError:
        """Turn a provider failure into one of our errors naming this store and ``key``.

        Providers override this with their SDK's error codes; the default treats an unknown
        failure as transient.
        """
        return wrap_error(exc, self, key)

    def _call(self, key: str, fn, *args, **kwargs):
        """Run one SDK call, translating its failure with :meth:`_error`."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self._error(exc, key) from exc

    def _retrying(self, key: str, fn):
        """``fn()`` translated like :meth:`_call`, retried with backoff while the store is unavailable
        (the only failure a retry can change)."""
        for attempt in Retrying(
            retry=retry_if_exception_type(StoreUnavailable),
            stop=stop_after_attempt(PART_ATTEMPTS),
            wait=self._part_retry_wait,
            reraise=True,
        ):
            with attempt:
                return self._call(key, fn)

    # -- provider primitives -----------------------------------------------------------------
    @abc.abstractmethod
    def _check(self) -> None: ...

    @abc.abstractmethod
    def _list_objects(self, prefix: str) -> Iterator[tuple[str, ObjectAttrs]]: ...

    @abc.abstractmethod
    def _open_read(self, key: str) -> BinaryIO: ...

    @abc.abstractmethod
    def _delete_object(self, key: str, version_id: str = "") -> None: ...

    @abc.abstractmethod
    def _put_small(self, key: str, data: bytes) -> None:
        """Store an object that fits in one part, atomically."""

    @abc.abstractmethod
    def _begin_upload(self, key: str) -> Any:
        """Start a multipart upload; returns provider state passed to the calls below."""

    @abc.abstractmethod
    def _upload_part(self, upload: Any, number: int, data: bytes) -> Any:
        """Upload part ``number`` (1-based); returns what completion needs about it."""

    @abc.abstractmethod
    def _complete_upload(self, upload: Any, parts: list[Any]) -> None: ...

    @abc.abstractmethod
    def _abort_upload(self, upload: Any) -> None:
        """Discard everything a failed upload staged. Must not raise for 'already gone'."""


for _name in _RELOADING_CALLS:
    setattr(SnapStore, _name, _reloading(SnapStore.__dict__[_name]))
SnapStore.close = _closing(SnapStore.__dict__["close"])


def read_full(stream: BinaryIO, size: int) -> bytes:
    """Read exactly ``size`` bytes unless the stream ends first (streams may return short reads)."""
    chunks, remaining = [], size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class ChunkedUpload:
    """Stream an object of unknown size in parts, with bounded parallelism and per-part retries.

    At most ``max_parallel_chunk_uploads`` parts are in flight plus the one being read, so memory
    stays near ``part_size * (parallelism + 1)`` whatever the object's size. The part size starts
    at ``min_chunk_size`` and doubles when the provider's part-count limit comes near, because the
    object's size is not known in advance.
    """

    def __init__(self, store: SnapStore, key: str) -> None:
        self.store = store
        self.key = key
        self.part_size = max(store.config.min_chunk_size, store.min_part_size)
        self.parallelism = max(1, store.config.max_parallel_chunk_uploads)

    def _next_part_size(self, number: int) -> int:
        # Keep (parts so far + parts still possible) under the provider's limit by doubling early.
        if number > 1 and number % max(1, self.store.max_parts // 8) == 0:
            self.part_size *= 2
        return self.part_size

    def run(self, stream: BinaryIO) -> int:
        first = read_full(stream, self.part_size)
        second = read_full(stream, self.part_size) if len(first) == self.part_size else b""
        if not second:
            self._retry(lambda: self.store._put_small(self.key, first))
            return len(first)
        pending = [first, second]
        # Our names would keep both parts alive for the whole upload: the list must own them alone.
        first = second = b""
        return self._multipart(stream, pending)

    def _retry(self, fn):
        return self.store._retrying(self.key, fn)

    def _multipart(self, stream: BinaryIO, pending: list[bytes]) -> int:
        upload = self._retry(lambda: self.store._begin_upload(self.key))
        results: dict[int, Any] = {}
        total = 0
        slots = threading.BoundedSemaphore(self.parallelism)
        futures: list[Future] = []
        failed = threading.Event()

        def send(number: int, data: bytes) -> None:
            try:
                results[number] = self._retry(lambda: self.store._upload_part(upload, number, data))
            except BaseException:
                failed.set()
                raise
            finally:
                slots.release()

        try:
            with ThreadPoolExecutor(self.parallelism, thread_name_prefix="part-upload") as pool:
                number = 0
                while True:
                    data = pending.pop(0) if pending else read_full(stream, self._next_part_size(number + 1))
                    if not data:
                        break
                    number += 1
                    total += len(data)
                    slots.acquire()
                    if failed.is_set():
                        slots.release()
                        break
                    futures.append(pool.submit(send, number, data))
                    del data
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    if f.done() and f.exception():
                        raise f.exception()
            parts = [results[n] for n in sorted(results)]
            self._retry(lambda: self.store._complete_upload(upload, parts))
            return total
        except BaseException:
            try:
                self.store._abort_upload(upload)
            except Exception as exc:  # the original failure matters more; leftovers are GC'd
                log.warning("could not abort upload", extra={"store": self.store.display, "key": self.key, "error": str(exc)})
            raise


class HashingReader(io.RawIOBase):
    """Pass bytes through while hashing and counting them (used to verify copies)."""

    def __init__(self, raw: BinaryIO, hasher) -> None:
        self.raw = raw
        self.hasher = hasher
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        data = self.raw.read(len(buf))
        n = len(data)
        buf[:n] = data
        self.hasher.update(data)
        self.count += n
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size) if size is not None and size >= 0 else self.raw.read()
        self.hasher.update(data)
        self.count += len(data)
        return data

    def close(self) -> None:
        try:
            self.raw.close()
        finally:
            super().close()


class TranslatingReader(io.RawIOBase):
    """An SDK's object body as a raw stream whose read failures are our errors (store and key named)."""

    def __init__(self, body, store: SnapStore, key: str) -> None:
        self._body = body
        self._store = store
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        try:
            data = self._body.read(len(buf))
        except Exception as exc:
            raise self._store._error(exc, self._key) from exc
        n = len(data)
        buf[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            except Exception:  # closing a half-read HTTP body may fail; the data is not needed
                pass
            finally:
                super().close()


def wrap_error(exc: Exception, store: SnapStore, key: str = "") -> StoreError:
    """Name the endpoint and object in an unexpected failure, treating it as transient."""
    if isinstance(exc, StoreError):
        return exc
    return StoreUnavailable(f"{type(exc).__name__}: {exc}", endpoint=store.display, key=key)
