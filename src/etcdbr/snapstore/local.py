"""Local directory store: ``$HOME/<container>/<prefix>/v2`` (an absolute container is used as is).

Writes go to a hidden staging directory beside the tree, are fsynced and then renamed into
place, so a crash or failure mid-write never leaves a file that lists as a snapshot.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ..fsutil import fsync_dir
from ..errors import ObjectNotFound, PermissionDenied, StoreError, StoreUnavailable
from ..snapshot import Snapshot
from .base import ObjectAttrs, SnapStore

COPY_BUFFER = 1024 * 1024
STAGING_DIR = ".etcdbr-staging"


class LocalStore(SnapStore):
    provider = "Local"

    def __init__(self, config) -> None:
        super().__init__(config)
        container = config.container or "default.bkp"
        base = Path(container) if os.path.isabs(container) else Path.home() / container
        self.root = base

    @property
    def display(self) -> str:
        return f"Local/{self.config.container or 'default.bkp'}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _error(self, exc: OSError, key: str) -> StoreError:
        if exc.errno == errno.ENOENT:
            return ObjectNotFound("no such object", endpoint=self.display, key=key)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDenied(str(exc.strerror), endpoint=self.display, key=key)
        return StoreUnavailable(f"{exc.strerror or exc}", endpoint=self.display, key=key)

    def _check(self) -> None:
        try:
            (self.root / self.prefix).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(exc, "") from exc

    def _list_objects(self, prefix: str) -> Iterator[tuple[str, ObjectAttrs]]:
        top = self._path(prefix) if prefix else self.root
        if not top.exists():
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = [d for d in dirnames if d != STAGING_DIR]
            for name in filenames:
                full = Path(dirpath) / name
                try:
                    size = full.stat().st_size
                except FileNotFoundError:
                    continue
                yield full.relative_to(self.root).as_posix(), ObjectAttrs(size=size)

    def save(self, snapshot: Snapshot, stream: BinaryIO) -> int:
        key = self.object_key(snapshot)
        target = self._path(key)
        staging = self.root / STAGING_DIR
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix="upload-", dir=staging)
        except OSError as exc:
            raise self._error(exc, key) from exc
        total = 0
        try:
            with os.fdopen(fd, "wb") as out:
                # A failure of the source stream is the caller's (not retryable as a store error);
                # only failures of our own writes become store errors.
                while chunk := stream.read(COPY_BUFFER):
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise self._error(exc, key) from exc
                    total += len(chunk)
                try:
                    out.flush()
                    os.fsync(out.fileno())
                    os.replace(tmp, target)
                    fsync_dir(target.parent)
                except OSError as exc:
                    raise self._error(exc, key) from exc
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return total

    def _open_read(self, key: str) -> BinaryIO:
        try:
            return open(self._path(key), "rb")
        except OSError as exc:
            raise self._error(exc, key) from exc

    def _delete_object(self, key: str, version_id: str = "") -> None:
        path = self._path(key)
        try:
            path.unlink()
        except OSError as exc:
            raise self._error(exc, key) from exc
        # v1 snapshot dirs and chunk dirs become empty once their last object is gone.
        parent = path.parent
        stop = self.root / self.prefix
        while parent != stop and parent != self.root and stop.parent != parent:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def copy_from(self, other: SnapStore, src: Snapshot, dst: Snapshot) -> bool:
        return False

    # Local writes are atomic renames; the multipart primitives are never used.
    def _put_small(self, key, data):  # pragma: no cover - save() is overridden
        raise NotImplementedError

    def _begin_upload(self, key):  # pragma: no cover
        raise NotImplementedError

    def _upload_part(self, upload, number, data):  # pragma: no cover
        raise NotImplementedError

    def _complete_upload(self, upload, parts):  # pragma: no cover
        raise NotImplementedError

    def _abort_upload(self, upload):  # pragma: no cover
        raise NotImplementedError
