"""The initializer: make ``--data-dir`` fit for etcd to start, restoring it only when it is not.

A healthy data dir is left exactly as it is (validation only reads). Before anything, the
wrong-volume guard (:func:`.datadir.check_volume`) refuses a volume of another namespace, and a
data dir whose db records neither ``--name`` nor this member's peer URLs is refused (exit 2,
both members in the line): the flags or etcd's config file are wrong, or the volume is another
member's.
Neither is ever restored over or moved, and neither is a data dir rolled back to a point in time
whose marker names the configured store while that store holds snapshots past the marker's
revision (:mod:`.rollback`, exit 1), unless ``--to-revision``/``--to-time`` is given: then the
operator asks for a point of that very timeline, and the target is the latest the data dir is
compared with.

One-member clusters: a missing, empty or corrupt data dir, or one whose revision is behind the
latest snapshot even after etcd's own WAL replay, is rebuilt from the store into
``<data-dir>.part``, checked and put in place; the old one is moved aside and kept (see
:mod:`.restorer`, :mod:`.datadir`). When there is nothing to restore from (no store configured,
or a store that answered and holds no full snapshot) an unusable data dir is moved aside (the Go
tool deletes it) so etcd starts a fresh member; a healthy one is kept. A store that fails is
never read as "empty": then nothing is moved and initialization fails.

Multi-member clusters (more than one member in ``--initial-cluster``), as the Go tool:

* no revision check: a member behind the latest snapshot is caught up by Raft when it starts;
* an unusable (missing, empty, corrupt) data dir is never rebuilt from a snapshot while the rest
  of the cluster has a quorum (asked through ``--service-endpoints``, else ``--endpoints``, plus
  the client URLs the other members advertise): the member is replaced through etcd's membership
  API and synced from the leader (see :mod:`.membership`), its old data dir kept aside;
* only when no other member has a quorum and none of those up holds data of its own (all of
  them restored or new, or none up within ``--quorum-wait``; asked on their peer URLs from
  ``--initial-cluster``) is it a whole-cluster loss, and the member is restored from the store
  like a one-member one: every member restores the same snapshot with the same initial cluster
  and token, etcd's disaster-recovery procedure;
* other members up with data of their own but without a quorum make initialization fail:
  restoring this member beside them would diverge from their data.

Statuses, for ``/initialization/status``: ``New`` -> ``Progress`` -> ``Successful`` | ``Failed``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .. import metrics
from ..config import Config, InitializeOptions
from ..errors import ConfigError, EtcdbrError, RestoreError
from .binaries import EtcdRelease, find_release
from .datadir import check_volume, move_aside, prune_asides, reason_word, recheck_after_wal_replay
from .membership import (
    ClusterView,
    MemberReplacer,
    cluster_size,
    manual_replacement,
    parse_initial_cluster,
    probe_peer,
    wait_for_cluster,
)
from .pitr import target_from
from .progress import Progress
from .replay import embedded_limits
from .restorer import Restorer
from .rollback import guard_configured
from .selection import Selection, select_source
from .validator import DataDirStatus, Validation, validate_data_dir

log = logging.getLogger(__name__)

MODES = ("full", "sanity")
# How long a member of a multi-member cluster waits for its peers to show a quorum before it
# takes an unusable data dir for part of a whole-cluster loss (``--quorum-wait``).
DEFAULT_QUORUM_WAIT = InitializeOptions.quorum_wait


class InitStatus(str, enum.Enum):
    NEW = "New"
    PROGRESS = "Progress"
    SUCCESSFUL = "Successful"
    FAILED = "Failed"


@dataclass
class InitResult:
    validation: Validation
    action: str  # "kept", "restored", "moved-aside", "nothing", "rejoined"
    revision: int | None = None
    aside: str = ""  # "moved-aside": where the unusable data dir is kept
    # "rejoined" only: the member's new ID, and how it was added (for a wrapper that wants to
    # know; etcd itself no longer reads these, as the data dir now holds the member's WAL)
    member_id: int | None = None
    initial_cluster: str = ""
    initial_cluster_state: str = ""


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
        check_volume(data_dir, create=True)  # a volume of another namespace: refused before anything
        if target_from(cfg) is None:  # with a target the operator asks for that point of the old timeline
            guard_configured(cfg, data_dir)  # a rolled-back data dir on the old timeline's store: refused
        size = cluster_size(cfg.restoration.initial_cluster)
        if size > 1:
            return self._run_multi(mode, data_dir, size)
        selection, store_error = self._open_store()
        try:
            validation = self._validate(mode, data_dir, selection)
            self._refuse_other_member(data_dir, validation)
            if validation.valid:
                if store_error is not None:
                    log.warning("the snapshot store cannot be read, so the data dir's revision was not compared "
                                "with the latest snapshot; keeping the data dir", extra={"error": str(store_error)})
                return self._keep(data_dir, validation, mode)
            self._unusable(data_dir, validation)
            return self._from_store(data_dir, validation, selection, store_error)
        finally:
            self._close(selection)

    def _open_store(self) -> tuple[Selection | None, EtcdbrError | None]:
        if not self.config.store.provider:
            return None, None
        try:
            return self._select(), None
        except ConfigError:
            raise
        except EtcdbrError as exc:
            return None, exc

    @staticmethod
    def _close(selection: Selection | None) -> None:
        if selection is not None:
            selection.close_others()
            selection.store.close()

    def _keep(self, data_dir: Path, validation: Validation, mode: str) -> InitResult:
        log.info("data dir is valid; leaving it untouched",
                 extra={"data_dir": str(data_dir), "revision": validation.revision, "mode": mode})
        target = target_from(self.config)
        if target is not None and validation.revision != target.revision:
            # The first rule: a healthy data dir is never replaced, not even to roll it back.
            log.warning(f"{target} was not applied: the data dir is healthy, and a healthy data dir is never "
                        "replaced, not even to roll it back; to roll the member back, restore into a new, "
                        "empty data dir and swap it in (docs/recovery.md)",
                        extra={"data_dir": str(data_dir), "revision": validation.revision})
        return InitResult(validation, "kept", validation.revision)

    def _refuse_other_member(self, data_dir: Path, validation: Validation) -> None:
        """A data dir recording other members' names is never judged unusable: it is either
        this member's under a name the flags get wrong, or another member's volume. Either way
        the flags or the mount must be fixed; nothing is restored or moved."""
        if validation.status is not DataDirStatus.MEMBER_MISMATCH:
            return
        rest = self.config.restoration
        origin = self.config.extra.get("origins", {}).get("name", "default")
        if origin == "default":
            from ..etcdconf import config_path

            origin = f"the default of --name; no etcd config file at {config_path()[0]} gives one"
        recorded = ", ".join(validation.members or []) or "another member"
        peers = ",".join(rest.initial_advertise_peer_urls) or "none"
        raise ConfigError(
            f"data dir {data_dir} belongs to member {recorded}, but this member's name is {rest.name!r} (from "
            f"{origin}) and its peer URLs are {peers}: set --name (or the name in etcd's config file, ETCD_CONF) "
            "or --initial-advertise-peer-urls to the member's, or mount this member's own volume; nothing was "
            "restored, moved or removed")

    @staticmethod
    def _unusable(data_dir: Path, validation: Validation) -> None:
        log.warning("data dir is not usable", extra={"data_dir": str(data_dir), "status": validation.status.value,
                                                     "reason": validation.reason})

    def _from_store(self, data_dir: Path, validation: Validation, selection: Selection | None,
                    store_error: EtcdbrError | None) -> InitResult:
        if store_error is not None:
            raise store_error
        if selection is None or selection.chain is None:
            return self._without_backup(data_dir, validation, bool(self.config.store.provider))
        restorer = Restorer(selection.store, self.config.restoration, progress=self.progress, release=self.release)
        revision = restorer.restore(str(data_dir), chain=selection.chain, replace=True, judged=validation)
        return InitResult(validation, "restored", revision)

    # -- multi-member clusters ---------------------------------------------------------------
    def _run_multi(self, mode: str, data_dir: Path, size: int) -> InitResult:
        validation = self._validate(mode, data_dir, None)
        self._refuse_other_member(data_dir, validation)
        if validation.valid:
            return self._keep(data_dir, validation, mode)
        self._unusable(data_dir, validation)
        rest = self.config.restoration
        others = [(n, u) for n, u in parse_initial_cluster(rest.initial_cluster)
                  if n != rest.name and u not in rest.initial_advertise_peer_urls]
        view = wait_for_cluster(self.config.etcd, self._peer_endpoints(), others, self._quorum_wait())
        if view.has_quorum:
            return self._rejoin(data_dir, validation, view)
        history = view.with_history()
        if history:
            raise RestoreError(
                f"the other members of this {size}-member cluster hold data but have no leader "
                f"({', '.join(f'{p.name} at {p.peer_url}' for p in history)} up): restoring {rest.name} from a "
                "snapshot beside them would diverge from their data. Start the other members (this one then "
                "rejoins through etcd's membership API), or, to restore the whole cluster, stop every member "
                "and remove every member's data dir")
        log.warning("no other member of the cluster has a quorum or data of its own: treating this as the "
                    "loss of the whole cluster and restoring the member from the store",
                    extra={"cluster_size": size, "members_up": ",".join(p.name for p in view.peers),
                           "endpoints": ",".join(view.endpoints)})
        selection, store_error = self._open_store()
        try:
            return self._from_store(data_dir, validation, selection, store_error)
        finally:
            self._close(selection)

    def _peer_endpoints(self) -> list[str]:
        """Client URLs to ask; those the members advertise are added by the probe."""
        etcd = self.config.etcd
        return [e for e in (etcd.service_endpoints or etcd.endpoints) if e.strip()]

    def _quorum_wait(self) -> float:
        wait = self.config.extra.get("quorum_wait", DEFAULT_QUORUM_WAIT)
        return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)

    def _rejoin(self, data_dir: Path, validation: Validation, view: ClusterView) -> InitResult:
        """Replace this member through etcd's membership API (remove, add as learner, sync from the
        leader, promote). Done automatically because the alternative, a member that stays down
        until someone runs etcdctl, is no safer: the steps only ever remove a member that is down
        and add one that cannot vote until it is in sync, and a failed sync is undone."""
        rest = self.config.restoration
        assert view.endpoint is not None and view.members is not None
        log.warning("the rest of the cluster has a quorum: this member is replaced through etcd's membership "
                    "API and synced from the leader, not restored from a snapshot",
                    extra={"member": rest.name, "endpoint": view.endpoint})
        if any(not u.startswith("http://") for u in rest.initial_advertise_peer_urls):
            # The temporary member that syncs the data dir would need the peer certificates,
            # which this tool is not given.
            raise RestoreError(
                f"member {rest.name} of a live cluster is replaced through etcd's membership API, not a snapshot "
                "restore, and its peer URLs use TLS, which initialize cannot serve; replace it by hand: "
                + manual_replacement(rest.name, rest.initial_advertise_peer_urls, view.endpoint, view.members))
        running = [u for u in rest.initial_advertise_peer_urls if probe_peer(self.config.etcd, rest.name, u)]
        if running:
            raise RestoreError(f"an etcd answers at this member's peer URL {running[0]}: initialize must run before "
                               "the member's etcd starts, and never replaces a running member")
        move_aside(data_dir, reason_word(validation))  # kept: see .datadir
        replacement = MemberReplacer(self.config.etcd, rest, self.release, data_dir).run(view)
        prune_asides(data_dir)
        log.warning("member rejoined the cluster: its data dir was synced from the leader, and etcd starts on it "
                    "with its usual flags (a data dir with a WAL makes --initial-cluster-state irrelevant)",
                    extra={"member": rest.name, "member_id": f"{replacement.member_id:x}",
                           "removed": ",".join(m.hex_id for m in replacement.removed),
                           "initial_cluster": replacement.initial_cluster, "data_dir": str(data_dir)})
        return InitResult(validation, "rejoined", member_id=replacement.member_id,
                          initial_cluster=replacement.initial_cluster, initial_cluster_state="existing")

    def _select(self) -> Selection:
        target = target_from(self.config)
        sel = select_source(self.config, target=target)
        if sel.chain is None:
            try:
                sel.chain = Restorer(sel.store, self.config.restoration, release=self._release).plan(target)
            except BaseException:
                self._close(sel)
                raise
        return sel

    def _validate(self, mode: str, data_dir: Path, selection: Selection | None) -> Validation:
        latest = selection.chain.last_revision if selection is not None and selection.chain else None
        started = time.monotonic()
        ok = False
        try:
            validation = validate_data_dir(data_dir, mode, name=self.config.restoration.name,
                                           latest_revision=latest, release=lambda: self.release,
                                           peer_urls=self.config.restoration.initial_advertise_peer_urls)
            if validation.status is DataDirStatus.REVISION_BEHIND:
                restoration = self.config.restoration
                validation = recheck_after_wal_replay(data_dir, validation, latest, release=self.release,
                                                      name=restoration.name, limits=embedded_limits(restoration))
            ok = True
            return validation
        finally:
            metrics.validation_duration.labels(succeeded=metrics.label_bool(ok)).observe(time.monotonic() - started)

    def _without_backup(self, data_dir: Path, validation: Validation, has_store: bool) -> InitResult:
        why = "no snapshot store is configured" if not has_store else "the store holds no full snapshot"
        if validation.status in (DataDirStatus.NOT_EXIST, DataDirStatus.EMPTY):
            log.info(f"nothing to restore: {why}; etcd will start a new member", extra={"data_dir": str(data_dir)})
            return InitResult(validation, "nothing")
        # Only a data dir etcd cannot open gets here (a healthy one is kept: without a snapshot
        # there is no revision to be behind). It is moved aside, never deleted.
        aside = move_aside(data_dir, reason_word(validation))
        log.warning(f"{why}; the unusable data dir was moved aside so that etcd starts a new member",
                    extra={"data_dir": str(data_dir), "status": validation.status.value,
                           "aside": str(aside) if aside else ""})
        return InitResult(validation, "moved-aside", aside=str(aside) if aside else "")
