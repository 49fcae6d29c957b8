"""Is an etcd data dir fit to start from? Read-only checks; nothing here writes to the data dir.

``sanity``: the directory layout (``member/snap/db``, ``member/wal/*.wal``), bbolt's meta pages
(magic, version, checksum), the membership recorded in the db (a member of our ``--name``; a
mismatch is reported, and the initializer refuses it rather than judge the data unusable) and,
when the caller asks for it (one-member clusters), the db's revision against the latest
snapshot's. ``full`` adds a read of the whole db by the configured ``etcdutl snapshot status``
(which fails on damaged pages) and the WAL file names.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import logging
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..errors import EtcdbrError
from .bbolt import CorruptDB, read_etcd_db
from .binaries import EtcdRelease

log = logging.getLogger(__name__)

ETCD_DEFAULT_PEER_URL = "http://localhost:2380"
WAL_NAME = re.compile(r"^[0-9a-f]{16}-[0-9a-f]{16}\.wal$")
STATUS_TIMEOUT = 1800


class DataDirStatus(str, enum.Enum):
    VALID = "Valid"
    NOT_EXIST = "NotExist"
    EMPTY = "Empty"
    INVALID_STRUCTURE = "InvalidStructure"
    CORRUPT = "Corrupt"
    MEMBER_MISMATCH = "MemberMismatch"
    REVISION_BEHIND = "RevisionBehind"


class DataDirLocked(EtcdbrError):
    """Another process (a running etcd) holds the db's lock: never validate or replace it."""


@dataclass
class Validation:
    status: DataDirStatus
    reason: str = ""
    revision: int | None = None
    members: list[str] | None = None  # MemberMismatch: the members the data dir records

    @property
    def valid(self) -> bool:
        return self.status is DataDirStatus.VALID


def _check_unlocked(db: Path) -> None:
    try:
        fd = os.open(db, os.O_RDONLY)
    except OSError:
        return  # unreadable files are judged by the checks that read them
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirLocked(f"another process holds the file lock on {db}: is etcd running on this data dir?"
                                ) from None
    finally:
        os.close(fd)


def db_status(release: EtcdRelease, db: Path) -> dict:
    """``etcdutl snapshot status`` of a db file: hash, revision, totalKey, totalSize."""
    try:
        out = subprocess.run([release.etcdutl, "snapshot", "status", str(db), "-w", "json"],
                             capture_output=True, text=True, timeout=STATUS_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise CorruptDB(f"etcdutl snapshot status did not finish within {STATUS_TIMEOUT}s") from None
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines() or ["no output"]
        raise CorruptDB(f"etcdutl snapshot status failed: {lines[-1][-300:]}")
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise CorruptDB(f"etcdutl snapshot status printed no status: {out.stdout[-200:]!r}") from None


def _records_member(members: list[dict], name: str, peer_urls: Sequence[str]) -> bool:
    """Does the db's membership include this member? By ``name``, or by its peer URLs: the db
    keeps the name a member was created or restored with, even after it runs under another one
    (etcd 3.5 updates only its v2 store then; a restore by the Go tool, which etcd-druid runs
    without ``--name``, records ``default``), and a member added at runtime (``member add``, a
    rejoin) has no name there at all. Peer URLs are how the cluster knows a member; etcd's default
    peer URL, which any member left at the defaults shares, identifies no one."""
    mine = set(peer_urls) - {ETCD_DEFAULT_PEER_URL}
    for m in members:
        if m.get("name") == name:
            return True
        urls = set(m.get("peerURLs") or ())
        if urls & mine or (not m.get("name") and not mine):
            return True
    return False


def _describe(members: list[dict]) -> list[str]:
    return [f"{m.get('name', '')!r} (peer URLs {','.join(m.get('peerURLs') or ()) or 'none'})" for m in members]


def _structure(path: Path, db: Path, wal: Path, wal_files: list[str]) -> Validation | None:
    """The verdict on a data dir that lacks the files of one, or None when they are there."""
    if not path.exists():
        return Validation(DataDirStatus.NOT_EXIST, f"{path} does not exist")
    if not path.is_dir():
        return Validation(DataDirStatus.INVALID_STRUCTURE, f"{path} is not a directory")
    if not any(path.iterdir()):
        return Validation(DataDirStatus.EMPTY, f"{path} is empty")
    for needed in (path / "member", db.parent, wal):
        if not needed.is_dir():
            return Validation(DataDirStatus.INVALID_STRUCTURE, f"{needed} is missing")
    if not db.is_file():
        return Validation(DataDirStatus.INVALID_STRUCTURE, f"{db} is missing")
    if not wal_files:
        return Validation(DataDirStatus.INVALID_STRUCTURE, f"{wal} holds no WAL file")
    return None


def _full_checks(db: Path, wal: Path, wal_files: list[str], revision: int,
                 release: EtcdRelease | Callable[[], EtcdRelease] | None) -> Validation | None:
    """The full mode's checks beyond the sanity ones: WAL names and ``etcdutl snapshot status``."""
    bad = [n for n in wal_files if not WAL_NAME.match(n)]
    if bad:
        return Validation(DataDirStatus.CORRUPT, f"unexpected WAL file name(s) in {wal}: {', '.join(sorted(bad))}")
    if callable(release):
        release = release()
    if release is None:
        return None
    try:
        status = db_status(release, db)
    except CorruptDB as exc:
        return Validation(DataDirStatus.CORRUPT, f"{db}: {exc}", revision=revision)
    if int(status.get("revision", -1)) > revision:
        # both read the same file: a disagreement means pages changed under us or are damaged
        return Validation(DataDirStatus.CORRUPT, f"{db}: inconsistent revision ({status.get('revision')} vs "
                          f"{revision})", revision=revision)
    return None


def validate_data_dir(data_dir: str | Path, mode: str, *, name: str | None, latest_revision: int | None,
                      release: EtcdRelease | Callable[[], EtcdRelease] | None = None,
                      peer_urls: Sequence[str] = ()) -> Validation:
    """Judge ``data_dir``. Raises :class:`DataDirLocked` when a running etcd owns it.

    ``latest_revision`` (the latest snapshot's, or None for no revision check: the initializer
    passes None for multi-member clusters, where Raft catches a member up) makes a db behind it
    RevisionBehind. ``peer_urls`` (``--initial-advertise-peer-urls``) recognise this member among
    unnamed membership records. ``release`` (or a function returning it, called only when
    needed) runs the full mode's ``etcdutl snapshot status``; without it that step is skipped.
    ``name`` None: any member's data dir (no membership check)."""
    path = Path(data_dir)
    member = path / "member"
    db = member / "snap" / "db"
    wal = member / "wal"
    wal_files = [p.name for p in wal.iterdir() if p.name.endswith(".wal")] if wal.is_dir() else []
    refusal = _structure(path, db, wal, wal_files)
    if refusal is not None:
        return refusal
    _check_unlocked(db)
    try:
        info = read_etcd_db(db)
    except CorruptDB as exc:
        return Validation(DataDirStatus.CORRUPT, f"{db}: {exc}")
    except OSError as exc:
        return Validation(DataDirStatus.CORRUPT, f"{db}: {exc.strerror or exc}")
    if name is not None and info.members and not _records_member(info.members, name, peer_urls):
        recorded = _describe(info.members)
        return Validation(DataDirStatus.MEMBER_MISMATCH,
                          f"the data dir belongs to member(s) {', '.join(recorded)}, not {name!r}",
                          revision=info.revision, members=recorded)
    if mode == "full":
        refusal = _full_checks(db, wal, wal_files, info.revision, release)
        if refusal is not None:
            return refusal
    if latest_revision is not None and info.revision < latest_revision:
        return Validation(DataDirStatus.REVISION_BEHIND,
                          f"db revision {info.revision} is behind the latest snapshot's revision {latest_revision}",
                          revision=info.revision)
    return Validation(DataDirStatus.VALID, "", revision=info.revision)
