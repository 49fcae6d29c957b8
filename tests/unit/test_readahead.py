"""ReadAhead: same bytes as the source, its errors raised where the consumer reads, bounded, closable."""

from __future__ import annotations

import io
import os
import threading

import pytest

from etcdbr.readahead import ReadAhead


class Source(io.RawIOBase):
    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        self.data = data
        self.pos = 0
        self.fail_at = fail_at
        self.closed_by_us = False
        self.reads = 0
        self._read = threading.Condition()

    def reached(self, reads: int, timeout: float) -> bool:
        """Wait until ``reads`` reads have been made; False if they have not after ``timeout`` s."""
        with self._read:
            return self._read.wait_for(lambda: self.reads >= reads, timeout)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        with self._read:
            self.reads += 1
            self._read.notify_all()
        if self.fail_at is not None and self.pos >= self.fail_at:
            raise ConnectionResetError("connection reset by peer")
        chunk = self.data[self.pos:self.pos + (n if n >= 0 else len(self.data))]
        self.pos += len(chunk)
        return chunk

    def close(self) -> None:
        self.closed_by_us = True
        super().close()


@pytest.mark.parametrize("size,step", [(0, 7), (1, 1), (1000, 7), (300_000, 65_536), (300_000, 1_000_000)])
def test_same_bytes_in_any_read_size(size: int, step: int) -> None:
    data = os.urandom(size)
    src = Source(data)
    with ReadAhead(src, block=4096, depth=2) as ra:
        parts = []
        while chunk := ra.read(step):
            assert len(chunk) <= step
            parts.append(chunk)
        assert ra.read(step) == b""
    assert b"".join(parts) == data
    assert src.closed_by_us


def test_read_all() -> None:
    data = os.urandom(50_000)
    with ReadAhead(Source(data), block=4096) as ra:
        assert ra.read(10) == data[:10]
        assert ra.read() == data[10:]


def test_source_error_is_raised_by_read_after_the_bytes_before_it() -> None:
    data = os.urandom(20_000)
    with ReadAhead(Source(data, fail_at=8192), block=4096) as ra:
        assert ra.read(8192) == data[:4096]
        assert ra.read(8192) == data[4096:8192]
        with pytest.raises(ConnectionResetError):
            ra.read(8192)


def test_reads_ahead_at_most_depth_blocks_and_close_stops_the_thread() -> None:
    src = Source(os.urandom(1_000_000))
    ra = ReadAhead(src, block=1000, depth=3)
    assert src.reached(4, timeout=5)
    # three blocks queued, one more read and waiting for room: no fifth read comes
    assert not src.reached(5, timeout=0.2)
    assert src.reads == 4
    before = threading.active_count()
    ra.close()
    assert threading.active_count() == before - 1
    assert src.closed_by_us
