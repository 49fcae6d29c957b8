"""What may happen to a member's data dir, and where an old one goes.

The rule everything here serves: **a data dir that etcd can open and that is at least as new as
the newest backup is never deleted or overwritten, whatever the flags say.**

* :func:`guard_replacement` is asked before any restore replaces an existing, non-empty data dir
  (``restore --replace-data-dir``, the initializer, a whole-cluster loss). It refuses a data dir
  whose db opens and whose revision (after etcd's own WAL replay, as on a start) reaches the
  backup being restored, and one it cannot judge (a multi-member data dir behind the backup,
  whose WAL only its peers can complete).
* An old data dir is never deleted: once the restored one is complete and checked, the old one is
  renamed to ``<data-dir>.aside-<UTC time>-<why>`` beside it, and the log says where.
* How many are kept: the newest :data:`KEEP_ASIDE` (2) asides of a data dir. An older one is
  removed only after a later restore of the same data dir has completed, and the log names it.
* Room: a restore builds the new data dir beside the old one, so the volume needs room for both
  at once. When it has none the restore fails (``no room on the volume``), the old data dir is
  left exactly as it was and nothing is deleted to make room; the error names the asides that
  could be removed to free space.
* The wrong-volume guard (the Go tool's ``safe_guard`` file): with ``POD_NAMESPACE`` set, the
  file ``safe_guard`` beside the data dir holds the namespace it was first used in; a volume
  whose file names another namespace was mounted on the wrong pod and is refused before
  anything is read, restored or moved.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..errors import EtcdbrError, RestoreError
from ..fsutil import fsync_dir, fsync_tree
from .binaries import EtcdRelease
from .validator import DataDirStatus, Validation, validate_data_dir

log = logging.getLogger(__name__)

KEEP_ASIDE = 2
ASIDE_MARK = ".aside-"
LEGACY_ASIDE_MARK = ".replaced-"  # earlier versions' multi-member asides
SAFE_GUARD = "safe_guard"
POD_NAMESPACE = "POD_NAMESPACE"


class DataDirRefused(RestoreError):
    """The data dir may not be replaced (the first rule); nothing was changed."""


class WrongVolume(EtcdbrError):
    """The volume holding the data dir belongs to another namespace (the safe_guard file)."""


def is_empty(path: Path) -> bool:
    """True for a missing path or an empty directory (nothing there to keep)."""
    if not (path.exists() or path.is_symlink()):
        return True
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


# -- the wrong-volume guard ------------------------------------------------------------------
def check_volume(data_dir: str | Path, *, create: bool) -> None:
    """The Go tool's safe_guard check. ``create``: write the file when it is missing (the
    initializer does, as the Go tool does); else only an existing file is compared."""
    namespace = os.environ.get(POD_NAMESPACE, "")
    if not namespace:
        log.info("POD_NAMESPACE is not set: the wrong-volume guard (safe_guard file) is off")
        return
    guard = Path(os.path.abspath(data_dir)).parent / SAFE_GUARD
    try:
        content = guard.read_bytes().decode("utf-8", "replace")
    except FileNotFoundError:
        if not create:
            return
        try:
            guard.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(namespace)
            fsync_dir(guard.parent)
        except OSError as exc:
            raise WrongVolume(f"cannot write the wrong-volume guard {guard}: {exc.strerror or exc}") from None
        log.info("wrote the wrong-volume guard", extra={"file": str(guard), "namespace": namespace})
        return
    except OSError as exc:
        raise WrongVolume(f"cannot read the wrong-volume guard {guard}: {exc.strerror or exc}") from None
    if content != namespace:
        raise WrongVolume(f"wrong volume mounted: {guard} says it belongs to namespace {content!r}, but "
                          f"POD_NAMESPACE is {namespace!r}; nothing was restored, moved or removed")
    try:
        os.chmod(guard, 0o600)  # the Go tool tightens files written by its older versions
    except OSError:
        pass


# -- asides ----------------------------------------------------------------------------------
def asides(data_dir: str | Path) -> list[Path]:
    """This data dir's asides, oldest first (their names sort by time)."""
    data = Path(os.path.abspath(data_dir))
    if not data.parent.is_dir():
        return []
    found = [p for p in data.parent.iterdir()
             if p.name.startswith(data.name + ASIDE_MARK) or p.name.startswith(data.name + LEGACY_ASIDE_MARK)]
    return sorted(found, key=lambda p: (p.name.split(ASIDE_MARK if ASIDE_MARK in p.name else LEGACY_ASIDE_MARK)[-1],
                                        p.name))


def aside_path(data_dir: str | Path, why: str) -> Path:
    data = Path(os.path.abspath(data_dir))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = data.with_name(f"{data.name}{ASIDE_MARK}{stamp}-{why}")
    n = 1
    while path.exists() or path.is_symlink():
        n += 1
        path = data.with_name(f"{data.name}{ASIDE_MARK}{stamp}-{why}-{n}")
    return path


def move_aside(data_dir: str | Path, why: str) -> Path | None:
    """Rename a non-empty data dir out of the way (an empty one is removed); returns where it went."""
    data = Path(os.path.abspath(data_dir))
    if not (data.exists() or data.is_symlink()):
        return None
    if is_empty(data):
        data.rmdir()
        return None
    target = aside_path(data, why)
    os.rename(data, target)
    fsync_dir(data.parent)
    log.warning("moved the old data dir aside; it is kept there", extra={"data_dir": str(data), "aside": str(target),
                                                                         "reason": why})
    return target


def prune_asides(data_dir: str | Path, keep: int = KEEP_ASIDE) -> list[Path]:
    """Remove all but the newest ``keep`` asides (called only after a completed restore)."""
    old = asides(data_dir)[:-keep] if keep > 0 else asides(data_dir)
    for path in old:
        log.warning(f"removing an old aside of the data dir (the newest {keep} are kept)",
                    extra={"aside": str(path), "data_dir": str(data_dir)})
        shutil.rmtree(path, ignore_errors=True)
    return old


def no_room(data_dir: str | Path, detail: str) -> RestoreError:
    """The error for a volume that cannot hold the old and the restored data dir at once."""
    kept = asides(data_dir)
    hint = (f"; the asides {', '.join(str(p) for p in kept)} could be removed to free space" if kept else "")
    return RestoreError(f"no room on the volume of {os.path.abspath(data_dir)} for the restored data dir beside the "
                        f"old one ({detail}); the old data dir is untouched and nothing was deleted to make room{hint}")


def is_no_space(exc: BaseException | str) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return "no space left on device" in str(exc).lower() or "disk quota exceeded" in str(exc).lower()


# -- judging a data dir that a restore would replace ------------------------------------------
def recheck_after_wal_replay(data_dir: Path, validation: Validation, latest: int | None, *, release: EtcdRelease,
                             name: str, limits) -> Validation:
    """The db may lag the WAL after a crash: let etcd replay it (as it would on start) and look
    again, as the Go initializer does. Only for one-member data dirs: a member of a larger
    cluster cannot finish its WAL without its peers."""
    from .embedded import EmbeddedEtcd

    log.info("db revision is behind the latest snapshot; letting etcd replay its WAL to check again",
             extra={"revision": validation.revision, "latest": latest})
    work = Path(tempfile.mkdtemp(prefix="validate-"))
    try:
        member = EmbeddedEtcd(release, data_dir, name=name, limits=limits, work_dir=work)
        try:
            member.start()
            revision = member.revision()
        except EtcdbrError as exc:
            return Validation(DataDirStatus.CORRUPT, f"etcd cannot start on the data dir: {exc}",
                              revision=validation.revision)
        finally:
            member.stop()
            try:  # the temporary member ran without fsync on the member's own data dir
                fsync_tree(data_dir)
            except OSError as exc:
                log.warning("could not flush the data dir after the WAL replay",
                            extra={"data_dir": str(data_dir), "error": exc.strerror or str(exc)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if latest is not None and revision < latest:
        return Validation(DataDirStatus.REVISION_BEHIND, f"revision {revision} after WAL replay is still behind "
                          f"the latest snapshot's revision {latest}", revision=revision)
    return Validation(DataDirStatus.VALID, "", revision=revision)


def judge(data_dir: Path, latest: int, *, release: EtcdRelease, limits) -> Validation:
    """Is the existing ``data_dir`` one etcd can open at revision >= ``latest``? Any member's."""
    from .bbolt import read_etcd_db

    validation = validate_data_dir(data_dir, "sanity", name=None, latest_revision=latest)
    if validation.status is not DataDirStatus.REVISION_BEHIND:
        return validation
    members = read_etcd_db(data_dir / "member" / "snap" / "db").members
    if len(members) > 1:
        raise DataDirRefused(
            f"refusing to replace {data_dir}: it is a data dir of a {len(members)}-member cluster whose db is at "
            f"revision {validation.revision}, behind the backup's {latest}, but its WAL may hold newer data that only "
            "its peers can complete; nothing was changed (move it away yourself to restore over it)")
    name = (members[0].get("name") if members else "") or "default"
    return recheck_after_wal_replay(data_dir, validation, latest, release=release, name=name, limits=limits)


def guard_replacement(data_dir: str | Path, latest: int, *, release: EtcdRelease, limits,
                      judged: Validation | None = None) -> Validation | None:
    """Raise :class:`DataDirRefused` unless the existing ``data_dir`` may be replaced by a
    restore reaching revision ``latest``. ``judged``: the caller's own validation of it (the
    initializer's), which must have found it unusable. None when there is nothing to keep."""
    data = Path(os.path.abspath(data_dir))
    if is_empty(data):
        return None
    if judged is None:
        judged = judge(data, latest, release=release, limits=limits)
    if judged.valid:
        raise DataDirRefused(
            f"refusing to replace {data}: etcd can open it and its revision {judged.revision} is at least the "
            f"backup's {latest}; a healthy data dir at least as new as the newest backup is never overwritten, "
            "whatever the flags say; nothing was changed")
    log.warning("the data dir will be replaced; the old one is moved aside once the restored one is complete",
                extra={"data_dir": str(data), "status": judged.status.value, "reason": judged.reason})
    return judged


def reason_word(validation: Validation | None) -> str:
    """A short word for the aside's name."""
    if validation is None:
        return "replaced"
    return {DataDirStatus.REVISION_BEHIND: "behind", DataDirStatus.CORRUPT: "corrupt",
            DataDirStatus.INVALID_STRUCTURE: "invalid"}.get(validation.status, "replaced")
