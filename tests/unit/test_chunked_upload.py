"""ChunkedUpload: our part splitting, ordering, parallelism, retries and abort.

The store below only records what the chunking machinery asks of a provider; it stands in for no
real service, so these tests exercise our logic and nothing else.
"""

from __future__ import annotations

import hashlib
import io
import random
import threading
import time
import tracemalloc

import pytest

from etcdbr.config import StoreConfig
from etcdbr.errors import PermissionDenied, StoreUnavailable
from etcdbr.retry import STORE_PART, Policy
from etcdbr.snapstore.objectstore import ChunkedUpload, ObjectStore

PART_ATTEMPTS = STORE_PART.attempts

PART = 1024


class RecordingStore(ObjectStore):
    provider = "Recording"
    min_part_size = 1

    def __init__(self, parallel: int = 3, part: int = PART, delay: float = 0.0) -> None:
        super().__init__(StoreConfig(provider="Local", container="rec", min_chunk_size=part,
                                     max_parallel_chunk_uploads=parallel))
        self.part_retry = Policy(attempts=STORE_PART.attempts, first_wait=0.0)
        self.delay = delay
        self.lock = threading.Lock()
        self.small: list[bytes] = []
        self.begun = 0
        self.parts: dict[int, bytes] = {}
        self.attempts: dict[int, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.completed: list | None = None
        self.aborted = 0
        self.failures: dict[int, list[Exception]] = {}  # part number -> errors to raise, in order
        self.on_part = None
        self.keep = True

    def _check(self): ...

    def _list_objects(self, prefix, include_all=True):
        return iter(())

    def _open_read(self, key, version_id=""):
        raise NotImplementedError

    def _delete_object(self, key, version_id=""):
        raise NotImplementedError

    def _put_small(self, key, data):
        self.small.append(bytes(data))

    def _begin_upload(self, key):
        self.begun += 1
        return {"key": key, "id": self.begun}

    def _upload_part(self, upload, number, data):
        with self.lock:
            self.attempts[number] = self.attempts.get(number, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            pending = self.failures.get(number)
            error = pending.pop(0) if pending else None
        try:
            if self.on_part:
                self.on_part(number)
            if self.delay:
                time.sleep(random.uniform(0, self.delay))
            if error:
                raise error
            with self.lock:
                self.parts[number] = bytes(data) if self.keep else hashlib.sha256(data).digest()
            return {"n": number, "len": len(data)}
        finally:
            with self.lock:
                self.in_flight -= 1

    def _complete_upload(self, upload, parts):
        self.completed = list(parts)

    def _abort_upload(self, upload):
        self.aborted += 1


class CountingStream(io.RawIOBase):
    """Deterministic bytes; records how far it has been read; can die at a given offset."""

    def __init__(self, size: int, fail_at: int | None = None) -> None:
        self.size = size
        self.pos = 0
        self.fail_at = fail_at
        self.read_size = 700
        self.data = bytes((i * 7 + i // 251) % 256 for i in range(size))

    def readable(self):
        return True

    def read(self, n=-1):
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise OSError("source died")
        end = self.size if n is None or n < 0 else min(self.size, self.pos + n)
        if self.fail_at is not None:
            end = min(end, self.fail_at)
        # Short reads on purpose: callers must loop until a part is full.
        end = min(end, self.pos + self.read_size)
        out = self.data[self.pos:end]
        self.pos = end
        return out


def run(store, stream):
    return ChunkedUpload(store, "p/v2/Full-00000000-00000001-1700000000").run(stream)


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART])
def test_object_of_at_most_one_part_is_put_whole(size):
    store = RecordingStore()
    stream = CountingStream(size)
    assert run(store, stream) == size
    assert store.small == [stream.data]
    assert store.begun == 0 and store.parts == {}


def test_parts_are_numbered_in_stream_order_and_completed_in_order():
    store = RecordingStore(parallel=4, delay=0.01)  # random delays finish parts out of order
    stream = CountingStream(10 * PART + 300)
    assert run(store, stream) == stream.size
    assert sorted(store.parts) == list(range(1, 12))
    assert all(len(store.parts[n]) == PART for n in range(1, 11)) and len(store.parts[11]) == 300
    assert b"".join(store.parts[n] for n in sorted(store.parts)) == stream.data
    assert [p["n"] for p in store.completed] == list(range(1, 12))
    assert store.aborted == 0


@pytest.mark.parametrize("parallel", [1, 2, 5])
def test_parallelism_and_read_ahead_are_bounded(parallel):
    store = RecordingStore(parallel=parallel, delay=0.02)
    stream = CountingStream(20 * PART)
    sent = []

    def on_part(number):
        # Bytes read from the source but not yet stored: the parts held in memory.
        with store.lock:
            sent.append(stream.pos - sum(len(d) for d in store.parts.values()))

    store.on_part = on_part
    run(store, stream)
    assert store.max_in_flight <= parallel
    assert store.max_in_flight == parallel  # the bound is reached, so the check above means something
    assert max(sent) <= (parallel + 1) * PART


def test_transient_part_failure_is_retried():
    store = RecordingStore(parallel=2)
    store.failures[3] = [StoreUnavailable("blip"), StoreUnavailable("blip")]
    stream = CountingStream(5 * PART)
    assert run(store, stream) == stream.size
    assert store.attempts[3] == 3 and store.attempts[1] == 1
    assert b"".join(store.parts[n] for n in sorted(store.parts)) == stream.data
    assert store.aborted == 0 and store.completed is not None


def test_part_failing_every_attempt_aborts_the_upload():
    store = RecordingStore(parallel=2)
    store.failures[2] = [StoreUnavailable("down")] * PART_ATTEMPTS
    with pytest.raises(StoreUnavailable):
        run(store, CountingStream(8 * PART))
    assert store.attempts[2] == PART_ATTEMPTS
    assert store.aborted == 1 and store.completed is None


def test_permanent_failure_is_not_retried_and_aborts():
    store = RecordingStore(parallel=2)
    store.failures[2] = [PermissionDenied("no")]
    with pytest.raises(PermissionDenied):
        run(store, CountingStream(30 * PART))
    assert store.attempts[2] == 1
    assert store.aborted == 1 and store.completed is None
    # Reading stops soon after the failure instead of draining the whole source.
    assert max(store.attempts) < 30


def test_source_failure_aborts_the_upload():
    store = RecordingStore(parallel=2)
    stream = CountingStream(10 * PART, fail_at=3 * PART + 10)
    with pytest.raises(OSError, match="source died"):
        run(store, stream)
    assert store.begun == 1 and store.aborted == 1 and store.completed is None


def test_part_size_grows_to_stay_under_the_part_limit():
    store = RecordingStore(parallel=3)
    store.max_parts = 16
    stream = CountingStream(150 * PART)  # 150 parts of the starting size would be far too many
    assert run(store, stream) == stream.size
    sizes = [len(store.parts[n]) for n in sorted(store.parts)]
    assert len(sizes) <= store.max_parts
    assert sizes[0] == PART and max(sizes) > PART
    assert sizes[:-1] == sorted(sizes[:-1])  # never shrinks
    assert b"".join(store.parts[n] for n in sorted(store.parts)) == stream.data


def test_part_size_stays_constant_far_from_the_limit():
    store = RecordingStore(parallel=3)
    run(store, CountingStream(40 * PART))
    assert {len(d) for d in store.parts.values()} == {PART}


def test_memory_holds_only_the_parts_in_flight():
    part = 1024 * 1024
    parallel = 2
    store = RecordingStore(parallel=parallel, part=part, delay=0.01)
    store.keep = False
    stream = CountingStream(12 * part)
    stream.read_size = 64 * 1024
    tracemalloc.start()
    try:
        run(store, stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(store.parts) == 12
    # In flight, one read ahead, and the part being assembled from short reads.
    assert peak < (parallel + 2) * part + part // 2, f"peak {peak / part:.2f} parts"
