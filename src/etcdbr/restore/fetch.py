"""Fetching one snapshot from a store to a local file, decompressed by its suffix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

from ..errors import EtcdbrError, IntegrityError, RestoreError, StoreError
from ..readahead import ReadAhead
from ..snapshot import Snapshot

if TYPE_CHECKING:
    from ..snapstore.streams import ByteStream

COPY_BUFFER = 1024 * 1024


class CountingReader:
    def __init__(self, raw: ByteStream, on_bytes: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.on_bytes(len(data))
        return data

    def close(self) -> None:
        self.raw.close()


def _decompressing(raw: ByteStream, snapshot: Snapshot) -> BinaryIO:
    from ..compression import decompressing_reader

    try:
        return decompressing_reader(raw, snapshot.compression_suffix)
    except EtcdbrError:
        raise
    except Exception as exc:  # unknown suffix and friends
        raise IntegrityError(f"{snapshot.key}: cannot decompress ({exc})") from exc


def fetch_to_file(store, snapshot: Snapshot, path: Path, on_bytes: Callable[[int], None] = lambda n: None) -> int:
    """Fetch, decompress by suffix and write one snapshot to ``path`` (created 0600)."""
    where = f"{store.display} object {snapshot.key}"
    raw = ReadAhead(store.fetch(snapshot))
    total = 0
    try:
        reader = _decompressing(CountingReader(raw, on_bytes), snapshot)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                while True:
                    try:
                        chunk = reader.read(COPY_BUFFER)
                    except (StoreError, IntegrityError):
                        raise
                    except Exception as exc:  # corrupt compressed data surfaces as codec errors
                        raise IntegrityError(f"{where}: cannot decompress: {exc}") from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    total += len(chunk)
        except OSError as exc:  # a full or read-only temp dir: say which file, not "internal error"
            raise RestoreError(f"{where}: cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        raw.close()
    return total

