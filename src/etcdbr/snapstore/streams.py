"""Stream wrappers the stores and their callers share: exact reads, hashing, SDK bodies whose
failures become our errors."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, BinaryIO, Iterator, Protocol

if TYPE_CHECKING:
    from .objectstore import ObjectStore


class ByteStream(Protocol):
    """What the stream wrappers read from: a binary file, or another wrapper (an
    ``io.RawIOBase`` whose ``read`` returns bytes, b"" at the end)."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


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


class HashingReader(io.RawIOBase):
    """Pass bytes through while hashing and counting them (used to verify copies)."""

    def __init__(self, raw: ByteStream, hasher) -> None:
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

    def __init__(self, body, store: ObjectStore, key: str) -> None:
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
            except Exception:  # noqa: BLE001 - closing a half-read HTTP body may fail; the data is not needed
                pass
            finally:
                super().close()


class ChunksBody:
    """An iterator of byte chunks (an SDK's ranged download) as a body with ``read(n)``.

    Reads hand out views of the current chunk, so :class:`TranslatingReader` copies each byte once.
    """

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def read(self, size: int = -1) -> memoryview:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return memoryview(b"")
            self._pending = memoryview(chunk)
        if size is None or size < 0:
            size = len(self._pending)
        out, self._pending = self._pending[:size], self._pending[size:]
        return out

    def close(self) -> None:
        self._pending = memoryview(b"")
        self._chunks = iter(())
