"""Full snapshots: etcd's snapshot stream, checked and compressed on its way into a store.

Nothing is ever held whole in memory or on disk here: the gRPC stream is pumped by the event loop
into a bounded hand-over queue, and ``store.save`` (in a worker thread) pulls from it through
:class:`TrailerVerifier` and the compressor. The verifier withholds the stream's last 32 bytes until
the end and raises there if they are not the SHA-256 of what came before, so the store's save
fails before it completes and nothing is stored (multipart aborted, temp file removed).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import io
import logging
import queue
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncGenerator, AsyncIterator, BinaryIO, Callable

from ..errors import EtcdError, IntegrityError
from ..etcd import client as etcdclient

if TYPE_CHECKING:
    from ..snapstore.streams import ByteStream

log = logging.getLogger("etcdbr.snapshotter")

HASH_SIZE = 32
# etcd's db is a whole number of pages; with the trailer appended, size % 512 is exactly 32.
_BLOCK = 512
# etcd sends its snapshot in 32 KiB messages. Handing each one to the uploading thread on its own
# cost more CPU than reading it from gRPC (a queue round trip, a loop wake-up and a pass through
# every reader layer per message: ~2.5 s per GiB), so the pump hands over blocks of about
# HANDOVER_BLOCK bytes, and at most HANDOVER_AHEAD bytes of them wait for the reader.
HANDOVER_BLOCK = 512 * 1024
HANDOVER_AHEAD = 2 * 1024 * 1024
# Attempts at a snapshot whose revision is known exactly before settling for a lower bound.
FENCE_ATTEMPTS = 5


class _EOF:
    pass


@dataclass
class _Failure:
    exc: BaseException


class StreamBridge(io.RawIOBase):
    """A blocking, file-like view of an async byte stream, for a reader in another thread.

    The event loop side (:meth:`pump`) gathers the stream's chunks into blocks of ``block`` bytes
    and runs at most ``ahead`` bytes of blocks ahead of the reader, so memory stays bounded
    whatever the stream's size; back-pressure reaches etcd through gRPC flow control. A failure of
    the stream is raised by the reader's next ``read``. ``read(n)`` returns ``n`` bytes unless the
    stream ends first, so a reader asking for a whole upload part gets it in one piece.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, ahead: int = HANDOVER_AHEAD,
                 block: int = HANDOVER_BLOCK) -> None:
        super().__init__()
        self._loop = loop
        self._block = max(1, block)
        # Unbounded as a queue.Queue: the bound is the semaphore, so that end markers always fit.
        self._queue: queue.Queue = queue.Queue()
        self._slots = asyncio.Semaphore(max(1, ahead // self._block))
        # The reader's side: chunks received and not yet returned, the first one from _offset.
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self._held = 0
        self._end: BaseException | None | type[_EOF] = None
        self.bytes_read = 0

    # -- event loop side -------------------------------------------------------------------
    async def pump(self, chunks: AsyncIterator[bytes], first: bytes = b"") -> None:
        try:
            block: list[bytes] = [first] if first else []
            size = len(first)
            async for chunk in chunks:
                block.append(chunk)
                size += len(chunk)
                if size >= self._block:
                    await self._slots.acquire()
                    self._queue.put(block)
                    block, size = [], 0
            if block:
                await self._slots.acquire()
                self._queue.put(block)
            self._queue.put(_EOF)
        except asyncio.CancelledError:
            self._queue.put(_Failure(EtcdError("snapshot stream cancelled")))
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which raises it
            self._queue.put(_Failure(exc))

    def abort(self, exc: BaseException) -> None:
        """Make the reader fail at its next read (from the event loop side)."""
        self._queue.put(_Failure(exc))

    def _release(self) -> None:
        try:
            self._loop.call_soon_threadsafe(self._slots.release)
        except RuntimeError:  # loop closed: nobody is pumping any more
            pass

    # -- reader thread side ----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def _receive(self) -> bool:
        """Wait for the next block; False at the end of the stream, raises its failure."""
        if self._end is _EOF:
            return False
        if isinstance(self._end, BaseException):
            raise self._end
        item = self._queue.get()
        if item is _EOF:
            self._end = _EOF
            return False
        if isinstance(item, _Failure):
            self._end = item.exc
            raise item.exc
        self._release()
        self._chunks.extend(item)
        self._held += sum(len(c) for c in item)
        return True

    def read(self, size: int | None = -1) -> bytes:
        want = None if size is None or size < 0 else size
        while (want is None or self._held < want) and self._receive():
            pass
        take = self._held if want is None else min(want, self._held)
        if take == 0:
            return b""
        pieces: list = []
        remaining = take
        chunks = self._chunks
        while remaining:
            chunk = chunks[0]
            start = self._offset
            n = min(len(chunk) - start, remaining)
            pieces.append(chunk if start == 0 and n == len(chunk) else memoryview(chunk)[start:start + n])
            remaining -= n
            if start + n == len(chunk):
                chunks.popleft()
                self._offset = 0
            else:
                self._offset = start + n
        self._held -= take
        self.bytes_read += take
        out = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return bytes(out) if isinstance(out, memoryview) else out

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)


class TrailerVerifier(io.RawIOBase):
    """Pass an etcd snapshot stream through unchanged, verifying etcd's SHA-256 trailer at its end.

    The last 32 bytes are withheld until the source ends; only then, if they match, are they
    handed out, so a consumer never sees the end of a stream that failed its check. A read of
    ``n`` bytes reads ``n`` from the source and copies them once.
    """

    def __init__(self, raw: ByteStream) -> None:
        super().__init__()
        self.raw = raw
        self._hash = hashlib.sha256()
        self._tail = b""
        self._done = False
        self.size = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self._done:
            return b""
        want = size if size is not None and size > 0 else 1 << 20
        while True:
            data = self.raw.read(want)
            if not data:
                self._verify()
                self._done = True
                tail, self._tail = self._tail, b""
                self.size += len(tail)
                return tail
            if len(data) >= HASH_SIZE:
                body = memoryview(data)[:-HASH_SIZE]
                out = self._tail + body if self._tail else bytes(body)
                self._tail = data[-HASH_SIZE:]
            else:
                joined = self._tail + data
                out, self._tail = joined[:-HASH_SIZE], joined[-HASH_SIZE:]
            if out:
                self._hash.update(out)
                self.size += len(out)
                return out

    def readinto(self, buf) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def _verify(self) -> None:
        total = self.size + len(self._tail)
        if len(self._tail) < HASH_SIZE or total % _BLOCK != HASH_SIZE:
            raise IntegrityError(f"SHA256 hash seems to be missing (snapshot of {total} bytes)")
        got = self._hash.digest()
        if got != self._tail:
            raise IntegrityError(f"snapshot hash mismatch: expected sha256 {self._tail.hex()}, got {got.hex()}")


@dataclass
class FencedStream:
    """An open snapshot stream with the revision its data holds."""

    chunks: AsyncGenerator[bytes, None]
    first: bytes
    revision: int
    exact: bool
    attempts: int


async def open_fenced_snapshot(client, timeout: float | None, attempts: int = FENCE_ATTEMPTS) -> FencedStream:
    """Open etcd's snapshot stream and find the revision it holds.

    etcd 3.5 sends no revision with a snapshot, and the Go tool names a snapshot after a revision
    read *before* opening it, so writes in between end up both in the snapshot and in the next
    delta. Here the stream is fenced instead: read the member's revision R1, open the stream and
    wait for its first chunk (etcd has opened the read transaction the snapshot is made of before
    it sends anything), then read the revision R2. The snapshot's revision lies in [R1, R2]; when
    R1 == R2 it is exactly R1. If not, the stream is dropped and the fence retried. If writes never
    pause, the last attempt is kept and named R1: the next delta then starts at R1+1 and may repeat
    a few events the snapshot already holds, which restore skips (it applies only events above the
    restored revision, as the Go tool's restore does). Both revisions are read from the member that
    streams the snapshot (Status is member-local), so a lagging follower fences correctly too.
    """
    for attempt in range(1, attempts + 1):
        before = (await etcdclient.status(client)).revision
        chunks = etcdclient.snapshot_stream(client, timeout)
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            await chunks.aclose()
            raise EtcdError("etcd sent an empty snapshot") from None
        except BaseException:
            await chunks.aclose()
            raise
        try:
            after = (await etcdclient.status(client)).revision
        except BaseException:
            await chunks.aclose()
            raise
        if before == after:
            return FencedStream(chunks, first, before, True, attempt)
        if attempt == attempts:
            log.info("etcd kept writing during every snapshot attempt; naming the snapshot after the revision read "
                     "before it, so the first delta snapshot may repeat events the full snapshot already holds "
                     "(restore skips them)",
                     extra={"revision_before": before, "revision_after": after, "attempts": attempts})
            return FencedStream(chunks, first, before, False, attempt)
        log.debug("revision moved while the snapshot opened; retrying",
                  extra={"revision_before": before, "revision_after": after, "attempt": attempt})
        await chunks.aclose()
    raise AssertionError("unreachable")  # pragma: no cover - the last attempt always returns


async def upload_stream(
    fenced: FencedStream,
    save: Callable[[BinaryIO], int],
    wrap: Callable[[ByteStream], BinaryIO],
) -> tuple[int, int]:
    """Stream ``fenced`` into ``save`` (run in a worker thread) through the trailer check and ``wrap``
    (the compressor). Returns (bytes read from etcd, bytes stored)."""
    loop = asyncio.get_running_loop()
    bridge = StreamBridge(loop)
    verifier = TrailerVerifier(bridge)
    pump = asyncio.create_task(bridge.pump(fenced.chunks, fenced.first), name="snapshot-pump")

    def work() -> int:
        return save(wrap(verifier))

    worker = loop.run_in_executor(None, work)
    try:
        stored = await asyncio.shield(worker)
    except asyncio.CancelledError:
        # The thread cannot be cancelled; make its next read fail so the store aborts, then wait.
        bridge.abort(EtcdError("snapshot cancelled"))
        pump.cancel()
        await asyncio.wait([worker])
        raise
    finally:
        pump.cancel()
        try:
            await pump
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the reader already saw it
            pass
        await fenced.chunks.aclose()
    return verifier.size, stored
