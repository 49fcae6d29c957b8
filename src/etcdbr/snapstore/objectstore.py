"""The base of the object stores (S3, GCS, ABS): uploads in parts, retries, error translation.

A provider fills in a few object-level primitives (``_check``, ``_list_objects``, ``_open_read``,
``_delete_object``, ``_put_small`` and the four multipart steps); chunking, parallelism and the
per-part retries (:data:`etcdbr.retry.STORE_PART`) live here once. Each provider's ``_error`` maps
its SDK's failures to our error family; :meth:`ObjectStore._call` applies it to one SDK call.
"""

from __future__ import annotations

import abc
import logging
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Self, TypeVar

from ..errors import EtcdbrError, StoreError, StoreUnavailable
from ..retry import STORE_PART, Policy, retry_call
from ..snapshot import Snapshot
from .base import ObjectAttrs, SnapStore
from .providers import IMPLEMENTATIONS
from .streams import read_full

if TYPE_CHECKING:
    from ..config import StoreConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest wait for a TCP (and TLS) connection; --store-timeout when that is shorter.
CONNECT_TIMEOUT = 10.0


class ObjectStore(SnapStore):
    """A store on an object service, written through multipart uploads."""

    #: Largest number of parts an upload may have (provider limit); part size grows to respect it.
    max_parts: int = 10_000
    #: Smallest part the provider accepts except for the last one.
    min_part_size: int = 5 * 1024 * 1024
    #: How one upload part or server-side copy step is tried again while the store is unavailable.
    part_retry: Policy = STORE_PART

    def __init__(self, config: "StoreConfig") -> None:
        super().__init__(config)
        if self.provider in IMPLEMENTATIONS:  # the service's own limits
            limits = IMPLEMENTATIONS[self.provider]
            self.max_parts, self.min_part_size = limits.max_parts, limits.min_part_size

    # -- timeouts ----------------------------------------------------------------------------
    @property
    def request_timeout(self) -> float:
        """``--store-timeout``: the longest wait for the service on one request, in seconds."""
        return max(0.1, self.config.timeout.total_seconds())

    @property
    def connect_timeout(self) -> float:
        return min(CONNECT_TIMEOUT, self.request_timeout)

    def _timed_out(self, where: str, connecting: bool = False) -> str:
        """The reason of a request that ran into its timeout, naming the flag that sets it."""
        flag_prefix = {"SECONDARY_": "--secondary-", "SOURCE_": "--source-"}.get(self.config.env_prefix, "--")
        flag = flag_prefix + "store-timeout"
        if connecting:
            return f"could not connect to {where} within {self.connect_timeout:g}s"
        return f"{where} did not answer within {self.request_timeout:g}s ({flag})"

    # -- the protocol, over the primitives ---------------------------------------------------
    def check(self, sweep: bool = True) -> None:
        self._check()
        if sweep:
            self._sweep_leftovers()

    def objects(self, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        prefix = self.list_root()
        try:
            yield from self._list_objects(prefix, include_all)
        except EtcdbrError:
            raise
        except Exception as exc:
            raise self._listing_error(exc, prefix) from exc

    def save(self, snapshot: Snapshot, stream: BinaryIO) -> int:
        return ChunkedUpload(self, self.object_key(snapshot)).run(stream)

    def fetch(self, snapshot: Snapshot) -> BinaryIO:
        return self._open_read(self.object_key(snapshot), snapshot.version_id)

    def delete(self, snapshot: Snapshot) -> None:
        self._delete_object(self.object_key(snapshot), snapshot.version_id)

    def _sweep_leftovers(self) -> None:
        """Remove abandoned upload leftovers; best effort, never raises."""

    # -- helpers of the providers ------------------------------------------------------------
    def _error(self, exc: BaseException, key: str = "") -> EtcdbrError:
        """Turn a provider failure into one of our errors naming this store and ``key``.

        Providers override this with their SDK's error codes; the default treats an unknown
        failure as transient.
        """
        return wrap_error(exc, self, key)

    def _listing_error(self, exc: BaseException, prefix: str) -> EtcdbrError:
        """:meth:`_error` for a failed listing of ``prefix``."""
        return self._error(exc, prefix)

    def _call(self, key: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run one SDK call, translating its failure with :meth:`_error`."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise self._error(exc, key) from exc

    def _retrying(self, key: str, fn: Callable[[], T]) -> T:
        """``fn()`` translated like :meth:`_call`, tried again as :attr:`part_retry` says while the
        store is unavailable (the only failure a retry can change)."""
        return retry_call(self.part_retry, lambda: self._call(key, fn))

    def _peer(self, other: SnapStore) -> Self | None:
        """``other`` (its current store, if it is wrapped) when it is of this provider and on this
        service, so that a server-side copy can work; else None."""
        other = other.resolve()
        if isinstance(other, type(self)) and other.service_identity == self.service_identity:
            return other
        return None

    def _copy_refused(self, other: SnapStore, src_key: str, reason: str) -> bool:
        """Log that the service refused a server-side copy (the credentials of this store cannot
        read the source); False tells the copier to stream the bytes instead."""
        log.info("server-side copy refused; streaming instead",
                 extra={"store": self.display, "source": other.display, "key": src_key, "error": reason})
        return False

    def _in_parts(self, key: str, upload: Any, items: Iterable[Any], step: Callable[[Any], Any],
                  complete: Callable[[list], None]) -> None:
        """Run ``step`` on every item, ``max_parallel_chunk_uploads`` at a time, then
        ``complete(results)``; on any failure ``upload`` is aborted and the failure raised."""
        try:
            with ThreadPoolExecutor(max(1, self.config.max_parallel_chunk_uploads),
                                    thread_name_prefix="part-copy") as pool:
                results = list(pool.map(step, items))
            complete(results)
        except BaseException:
            self._abort_quietly(key, upload)
            raise

    def _abort_quietly(self, key: str, upload: Any) -> None:
        try:
            self._abort_upload(upload)
        except Exception as exc:  # noqa: BLE001 - the original failure matters more; leftovers are swept later
            log.warning("could not abort upload", extra={"store": self.display, "key": key, "error": str(exc)})

    @staticmethod
    def _close_client(client) -> None:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing is best effort: the pool dies with the process anyway
            pass

    # -- provider primitives -----------------------------------------------------------------
    @abc.abstractmethod
    def _check(self) -> None: ...

    @abc.abstractmethod
    def _list_objects(self, prefix: str, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        """The objects under ``prefix`` (see ``SnapStore.objects``); failures are translated by
        :meth:`_listing_error`."""

    @abc.abstractmethod
    def _open_read(self, key: str, version_id: str = "") -> BinaryIO: ...

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


class ChunkedUpload:
    """Stream an object of unknown size in parts, with bounded parallelism and per-part retries.

    At most ``max_parallel_chunk_uploads`` parts are in memory, the one being read included (a
    part is read only once a slot is free), so memory stays near ``part_size * parallelism``
    whatever the object's size. The part size starts
    at ``min_chunk_size`` and doubles when the provider's part-count limit comes near, because the
    object's size is not known in advance.
    """

    def __init__(self, store: ObjectStore, key: str) -> None:
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
                    # A slot first, then the part: no part read ahead waits in memory for a slot.
                    slots.acquire()
                    if failed.is_set():
                        slots.release()
                        break
                    data = pending.pop(0) if pending else read_full(stream, self._next_part_size(number + 1))
                    if not data:
                        slots.release()
                        break
                    number += 1
                    total += len(data)
                    futures.append(pool.submit(send, number, data))
                    del data
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    error = f.exception() if f.done() else None
                    if error is not None:
                        raise error
            parts = [results[n] for n in sorted(results)]
            self._retry(lambda: self.store._complete_upload(upload, parts))
            return total
        except BaseException:
            self.store._abort_quietly(self.key, upload)
            raise


def wrap_error(exc: BaseException, store: SnapStore, key: str = "") -> StoreError:
    """Name the endpoint and object in an unexpected failure, treating it as transient."""
    if isinstance(exc, StoreError):
        return exc
    return StoreUnavailable(f"{type(exc).__name__}: {exc}", endpoint=store.display, key=key)
