"""Local directory store: ``$HOME/<container>/<prefix>/v2`` (an absolute container is used as is).

An absolute container is where the Go tool differs: it joins every container under ``$HOME``
(``path.Join(home, container, prefix)``), so ``/var/backups`` is ``$HOME/var/backups`` for it (the
same directory only when ``$HOME`` is ``/``). Both places are looked at: when only the Go tool's
holds a store, that one is used (an operator switching tools keeps their backups); when both
do, the absolute path is used; either way a WARN names both (:func:`resolve_container`).

Writes go to a hidden staging directory beside the tree, are fsynced and then renamed into
place, so a crash or failure mid-write never leaves a file that lists as a snapshot.

A vanished store is not an empty store: once checked, the container must stay an existing
directory, and a store tree that was there and disappears is an error (StoreUnavailable), never
"0 snapshots" (the copier would otherwise take the primary for empty, or the secondary for lost).
Saves never recreate a vanished container: it may be a mount point that went away.

Staging leftovers: a process killed mid-upload leaves ``.etcdbr-staging/upload-*`` behind. A
writer holds an exclusive ``flock`` on its staging file until it is renamed into place, so the
lock is free exactly when no live process writes it (the kernel drops it with the process,
SIGKILL included). ``check()`` removes a staging file only when its lock is free **and** it was
not written for :data:`STALE_STAGING` (the age covers filesystems whose locks are not shared
between hosts: a live upload writes every MiB it gets, and each read of its source is bounded
by a store or etcd timeout far below an hour).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, Iterator

from ..errors import ObjectNotFound, PermissionDenied, StoreError, StoreUnavailable
from ..fsutil import fsync_dir
from ..snapshot import Snapshot
from .base import Leftover, ObjectAttrs, SnapStore
from .providers import LOCAL, STAGING_DIR

log = logging.getLogger(__name__)

COPY_BUFFER = 1024 * 1024
STAGING_PREFIX = "upload-"
#: A staging file not written for this long, whose lock no process holds, is abandoned.
STALE_STAGING = timedelta(hours=1)


def _holds_store(root: Path, tree: str) -> bool:
    """Whether ``root/tree`` (a store's ``<prefix>/``, v1 and v2 beneath) has any file in it."""
    top = root / tree
    try:
        return top.is_dir() and any(p.is_file() for p in top.rglob("*") if STAGING_DIR not in p.parts)
    except OSError:
        return False


def resolve_container(container: str, tree: str) -> Path:
    """The directory of a Local container: ``$HOME/<container>`` when relative; when absolute,
    the path itself, unless only the Go tool's reading of it (``$HOME`` + the path) holds a store
    under ``tree``. A WARN names both places whenever they differ and the Go tool's holds one."""
    home = Path.home()
    if not os.path.isabs(container):
        return home / container
    ours = Path(container)
    go = Path(os.path.normpath(f"{home}/{container}"))
    if go == ours or not _holds_store(go, tree):
        return ours
    if _holds_store(ours, tree):
        log.warning("Local store: the absolute container %s holds snapshots and so does %s, where the Go "
                    "etcdbrctl resolves it ($HOME joined in front); using %s, the other is not read", ours, go, ours)
        return ours
    log.warning("Local store: the absolute container %s holds no snapshots but %s does, where the Go etcdbrctl "
                "resolves it ($HOME joined in front); using %s", ours, go, go)
    return go


class LocalStore(SnapStore):
    provider = LOCAL

    def __init__(self, config) -> None:
        super().__init__(config)
        container = config.container or "default.bkp"
        self.root = resolve_container(container, self.list_root())
        #: The container, and the store's tree (``<container>/<prefix>/v2``), were seen: from now
        #: on their absence is an outage, not an empty store.
        self._root_seen = False
        self._tree_seen = False

    @property
    def display(self) -> str:
        container = self.config.container or "default.bkp"
        # an absolute directory reads as one path ("Local:/srv/backups"), never "Local//srv/backups"
        return f"Local:{container}" if os.path.isabs(container) else f"Local/{container}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def _vanished(self, key: str = "") -> StoreUnavailable | None:
        """The error for a container that is no directory, or that existed and is gone; else None
        (a container never seen yet is created by the first check or save)."""
        if self.root.is_dir():
            self._root_seen = True
            return None
        if self.root.exists():
            what = "is not a directory"
        elif self._root_seen:
            what = "has disappeared"
        else:
            return None
        return StoreUnavailable(f"the container directory {self.root} {what}", endpoint=self.display, key=key)

    def _error(self, exc: OSError, key: str) -> StoreError:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            vanished = self._vanished(key)
            if vanished is not None:
                return vanished
            if exc.errno == errno.ENOENT:
                return ObjectNotFound("no such object", endpoint=self.display, key=key)
        if exc.errno in (errno.EACCES, errno.EPERM):
            return PermissionDenied(str(exc.strerror), endpoint=self.display, key=key)
        return StoreUnavailable(f"{exc.strerror or exc}", endpoint=self.display, key=key)

    def check(self, sweep: bool = True) -> None:
        if not sweep:  # read-only commands (snapshot list, verify) create nothing
            vanished = self._vanished()
            if vanished is not None:
                raise vanished
            if not self.root.is_dir():
                raise StoreUnavailable(f"the container directory {self.root} does not exist", endpoint=self.display)
            self._root_seen = True
            self._tree_seen = (self.root / self.prefix).is_dir()
            return
        try:
            (self.root / self.prefix).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(exc, "") from exc
        self._root_seen = self._tree_seen = True
        if sweep:
            self._sweep_leftovers()

    def objects(self, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        # Nothing hides a file from a listing here: ``include_all`` changes nothing.
        prefix = self.list_root()
        vanished = self._vanished()
        if vanished is not None:
            raise vanished
        tree = self.root / self.prefix
        if tree.is_dir():
            self._tree_seen = True
        elif self._tree_seen:
            raise StoreUnavailable(f"the store's directory {tree} has disappeared", endpoint=self.display)
        top = self._path(prefix) if prefix else self.root
        if not top.exists():
            return

        def walk_error(exc: OSError) -> None:
            # A subdirectory emptied and removed meanwhile (GC of a v1 or chunk directory) is fine;
            # anything else would silently drop snapshots from the listing.
            if exc.errno == errno.ENOENT and Path(exc.filename or "") != top:
                return
            raise StoreUnavailable(f"cannot list {exc.filename}: {exc.strerror or exc}", endpoint=self.display)

        for dirpath, dirnames, filenames in os.walk(top, onerror=walk_error):
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
        vanished = self._vanished(key)
        if vanished is not None:
            raise vanished
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=staging)
        except OSError as exc:
            raise self._error(exc, key) from exc
        try:
            # Held until the file is renamed into place (or removed): the sweep's "live" test.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass  # a filesystem without locks: the sweep's age rule still protects this upload
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
            except OSError:  # gone, or the container vanished under us: the first error matters
                pass
            raise
        return total

    def fetch(self, snapshot: Snapshot) -> BinaryIO:
        return self._open_read(self.object_key(snapshot))

    def delete(self, snapshot: Snapshot) -> None:
        self._delete_object(self.object_key(snapshot), snapshot.version_id)

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

    # -- staging leftovers -------------------------------------------------------------------
    def staging_leftovers(self) -> list[Leftover]:
        staging = self.root / STAGING_DIR
        try:
            entries = list(os.scandir(staging))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(exc, STAGING_DIR) from exc
        now = time.time()
        out = []
        for entry in entries:
            if not entry.name.startswith(STAGING_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # renamed into place or removed meanwhile
            age = max(0.0, now - st.st_mtime)
            out.append(Leftover(f"{STAGING_DIR}/{entry.name}", age, st.st_size,
                                age >= STALE_STAGING.total_seconds() and not _locked(entry.path)))
        return sorted(out, key=lambda leftover: leftover.key)

    def _sweep_leftovers(self) -> None:
        try:
            leftovers = self.staging_leftovers()
        except StoreError as exc:
            log.warning("could not list abandoned upload leftovers", extra={"store": self.display, "error": str(exc)})
            return
        removed = 0
        for leftover in leftovers:
            if leftover.abandoned and _remove_unlocked(self.root / leftover.key):
                removed += 1
                log.info("removed a staging file an interrupted upload left behind",
                         extra={"store": self.display, "file": leftover.key, "bytes": leftover.size,
                                "age_seconds": round(leftover.age)})
        kept = sum(not leftover.abandoned for leftover in leftovers)
        if kept:
            log.info("staging files of uploads that may still be running were kept", extra={
                "store": self.display, "files": kept, "rule": f"removed once unlocked and {STALE_STAGING} old"})


def _locked(path: str | Path) -> bool:
    """Does a live process hold the writer's lock on this staging file?"""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False  # no locks on this filesystem: the age alone decides
    finally:
        os.close(fd)
    return False


def _remove_unlocked(path: Path) -> bool:
    """Remove a staging file while holding its lock, so no writer can have taken it meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            pass
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("could not remove an abandoned staging file", extra={"file": str(path), "error": exc.strerror})
            return False
        return True
    finally:
        os.close(fd)
