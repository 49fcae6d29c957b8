"""The initializer: make ``--data-dir`` fit for etcd to start, restoring it only when it is not.

A healthy data dir is left exactly as it is (validation only reads). A missing, empty, corrupt
or foreign one, or one whose revision is behind the latest snapshot even after etcd's own WAL
replay, is rebuilt from the store into ``<data-dir>.part`` and swapped in (see
:mod:`.restorer`). When there is nothing to restore from (no store configured, or a store that
answered and holds no full snapshot) an unusable data dir is removed so etcd starts a fresh
member, as the Go tool does. A store that fails is never read as "empty": then nothing is
removed and initialization fails.

Statuses, for ``/initialization/status``: ``New`` -> ``Progress`` -> ``Successful`` | ``Failed``.
"""

from __future__ import annotations

import enum
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import metrics
from ..config import Config
from ..errors import ConfigError, EtcdbrError
from .binaries import EtcdRelease, find_release
from .embedded import EmbeddedEtcd
from .progress import Progress
from .restorer import Restorer, embedded_limits
from .selection import Selection, select_source
from .validator import DataDirStatus, Validation, validate_data_dir

log = logging.getLogger(__name__)

MODES = ("full", "sanity")


class InitStatus(str, enum.Enum):
    NEW = "New"
    PROGRESS = "Progress"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"


@dataclass
class InitResult:
    validation: Validation
    action: str  # "kept", "restored", "removed", "nothing"
    revision: int | None = None


class Initializer:
    """Validate and, if needed, restore ``config.restoration.data_dir``. ``run`` is blocking;
    ``status`` may be read from other threads while it runs."""

    def __init__(self, config: Config, *, progress: Progress | None = None, release: EtcdRelease | None = None) -> None:
        self.config = config
        self.progress = progress
        self._release = release
        self._lock = threading.Lock()
        self._status = InitStatus.NEW
        self.error: BaseException | None = None
        self.result: InitResult | None = None

    @property
    def status(self) -> InitStatus:
        with self._lock:
            return self._status

    def _set(self, status: InitStatus) -> None:
        with self._lock:
            self._status = status

    def start(self) -> bool:
        """Claim the run: True (and status Progress) only if status was New."""
        with self._lock:
            if self._status is not InitStatus.NEW:
                return False
            self._status = InitStatus.PROGRESS
            return True

    def reset(self) -> None:
        """Back to New after a terminal status was reported (the Go server's behaviour)."""
        with self._lock:
            if self._status in (InitStatus.SUCCESSFUL, InitStatus.FAILED):
                self._status = InitStatus.NEW

    @property
    def release(self) -> EtcdRelease:
        if self._release is None:
            self._release = find_release(self.config.restoration.etcd_bin_dir)
        return self._release

    def run(self, mode: str = "full") -> InitResult:
        """Validate, then restore or remove as needed. Raises on failure (status Failed)."""
        with self._lock:
            self._status = InitStatus.PROGRESS
        self.error = None
        try:
            if mode not in MODES:
                raise ConfigError(f"--validation-mode must be full or sanity, not {mode!r}")
            self.result = self._run(mode)
        except BaseException as exc:
            self.error = exc
            self._set(InitStatus.FAILED)
            log.error("initialization failed", extra={"error": str(exc)})
            raise
        self._set(InitStatus.SUCCESSFUL)
        return self.result

    # -- steps -------------------------------------------------------------------------------
    def _run(self, mode: str) -> InitResult:
        cfg = self.config
        data_dir = Path(cfg.restoration.data_dir)
        has_store = bool(cfg.store.provider)
        selection: Selection | None = None
        store_error: EtcdbrError | None = None
        if has_store:
            try:
                selection = self._select()
            except EtcdbrError as exc:
                if isinstance(exc, ConfigError):
                    raise
                store_error = exc
        try:
            validation = self._validate(mode, data_dir, selection)
            if validation.valid:
                if store_error is not None:
                    log.warning("the snapshot store cannot be read, so the data dir's revision was not compared "
                                "with the latest snapshot; keeping the data dir", extra={"error": str(store_error)})
                log.info("data dir is valid; leaving it untouched",
                         extra={"data_dir": str(data_dir), "revision": validation.revision, "mode": mode})
                return InitResult(validation, "kept", validation.revision)
            log.warning("data dir is not usable", extra={"data_dir": str(data_dir), "status": validation.status.value,
                                                         "reason": validation.reason})
            if store_error is not None:
                raise store_error
            if selection is None or selection.chain is None:
                return self._without_backup(data_dir, validation, has_store)
            restorer = Restorer(selection.store, cfg.restoration, progress=self.progress, release=self.release)
            revision = restorer.restore(str(data_dir), chain=selection.chain)
            return InitResult(validation, "restored", revision)
        finally:
            if selection is not None:
                selection.close_others()
                try:
                    selection.store.close()
                except Exception:
                    pass

    def _select(self) -> Selection:
        sel = select_source(self.config)
        if sel.chain is None:
            sel.chain = Restorer(sel.store, self.config.restoration, release=self._release).latest()
        return sel

    def _validate(self, mode: str, data_dir: Path, selection: Selection | None) -> Validation:
        latest = selection.chain.last_revision if selection is not None and selection.chain else None
        started = time.monotonic()
        ok = False
        try:
            validation = validate_data_dir(data_dir, mode, name=self.config.restoration.name,
                                           latest_revision=latest, release=lambda: self.release)
            if validation.status is DataDirStatus.REVISION_BEHIND:
                validation = self._recheck_after_wal_replay(data_dir, validation, latest)
            ok = True
            return validation
        finally:
            metrics.validation_duration.labels(succeeded=metrics.label_bool(ok)).observe(time.monotonic() - started)

    def _recheck_after_wal_replay(self, data_dir: Path, validation: Validation, latest: int | None) -> Validation:
        """The db may lag the WAL after a crash: let etcd replay it (as it would on start) and look
        again, as the Go initializer does."""
        log.info("db revision is behind the latest snapshot; letting etcd replay its WAL to check again",
                 extra={"revision": validation.revision, "latest": latest})
        restoration = self.config.restoration
        work = Path(tempfile.mkdtemp(prefix="validate-"))
        try:
            member = EmbeddedEtcd(self.release, data_dir, name=restoration.name, limits=embedded_limits(restoration),
                                  work_dir=work)
            try:
                member.start()
                assert member.client is not None
                revision = member.client.revision()
            except EtcdbrError as exc:
                return Validation(DataDirStatus.CORRUPT, f"etcd cannot start on the data dir: {exc}",
                                  revision=validation.revision)
            finally:
                member.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if latest is not None and revision < latest:
            return Validation(DataDirStatus.REVISION_BEHIND, f"revision {revision} after WAL replay is still behind "
                              f"the latest snapshot's revision {latest}", revision=revision)
        return Validation(DataDirStatus.VALID, "", revision=revision)

    def _without_backup(self, data_dir: Path, validation: Validation, has_store: bool) -> InitResult:
        why = "no snapshot store is configured" if not has_store else "the store holds no full snapshot"
        if validation.status in (DataDirStatus.NOT_EXIST, DataDirStatus.EMPTY):
            log.info(f"nothing to restore: {why}; etcd will start a new member", extra={"data_dir": str(data_dir)})
            return InitResult(validation, "nothing")
        log.warning(f"{why}; removing the unusable data dir so that etcd starts a new member",
                    extra={"data_dir": str(data_dir), "status": validation.status.value})
        if data_dir.is_dir() and not data_dir.is_symlink():
            shutil.rmtree(data_dir)
        else:
            data_dir.unlink()
        return InitResult(validation, "removed")
