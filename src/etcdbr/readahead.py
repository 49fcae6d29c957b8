"""Read a stream ahead of its consumer in a thread of its own.

A restore downloads a full snapshot, inflates it and writes it to disk. Done in one thread the
three take turns; with the download in a second thread the network wait overlaps the inflate
(ISA-L and the socket reads release the GIL), and the bounded queue keeps memory at
``depth`` blocks whatever the object's size.
"""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .snapstore.streams import ByteStream

_END = object()


class ReadAhead:
    """A file-like ``read()`` over ``raw``, fed by a thread reading ``block`` bytes at a time.

    Errors of the source are raised by the consumer's ``read`` at the point they occurred;
    ``close()`` stops the thread and closes the source.
    """

    def __init__(self, raw: ByteStream, *, block: int = 1024 * 1024, depth: int = 4) -> None:
        self.raw = raw
        self._block = block
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._buffer = memoryview(b"")
        self._done = False
        self._thread = threading.Thread(target=self._pump, name="read-ahead", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                data = self.raw.read(self._block)
                if not data:
                    break
                if not self._put(data):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised where it reads
            self._put(exc)
            return
        self._put(_END)

    def _next(self) -> bool:
        if self._done:
            return False
        item = self._queue.get()
        if item is _END:
            self._done = True
            return False
        if isinstance(item, BaseException):
            self._done = True
            raise item
        self._buffer = memoryview(item)
        return True

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buffer)]
            self._buffer = memoryview(b"")
            while self._next():
                parts.append(bytes(self._buffer))
            self._buffer = memoryview(b"")
            return b"".join(parts)
        if not self._buffer and not self._next():
            return b""
        out = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return bytes(out)

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a pump waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        # Closing the source first makes a pump blocked in a network read return at once.
        self.raw.close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
