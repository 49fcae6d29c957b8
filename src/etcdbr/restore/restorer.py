"""Rebuilding an etcd data dir from a store: the latest full snapshot, then every delta after it.

What a restore promises:

* The previous data dir is never touched until the new one is complete and checked (its db
  opens, names the member, holds the revision reached, has etcd authentication on exactly when
  the full snapshot had). The new one is built in ``<data-dir>.part`` beside it and put in place
  with renames; the old one is moved aside and kept (:mod:`.datadir`). A failure at any step
  before that leaves the old data dir exactly as it was. A non-empty data dir is replaced only
  when the caller asks, and never one etcd can open at the backup's revision or later.
* A backup with etcd authentication on is replayed with auth switched off in the db being built
  (the replay writes as no user); it is switched back on before the check above.
* The full snapshot is restored by the real ``etcdutl snapshot restore`` of the configured etcd
  release, which also checks etcd's SHA-256 trailer (unless ``--skip-hash-check``).
* Deltas are replayed through a temporary etcd member on the ``.part`` dir (a one-member copy
  first when the cluster has several members), one transaction per source revision, so the
  restored keyspace has the source's revisions and its current revision; :mod:`.replay` holds
  that engine and what it promises.
* With the direct replay (:mod:`.direct`, the default) the deltas are fetched and decoded while
  ``etcdutl`` restores the full snapshot (a process of its own, so the decoding gets the other
  core), within the replay's own memory bound (:class:`.deltas.DeltaPrefetch`: at most
  ``--max-fetchers`` fetched deltas on disk, one decoded ahead); nothing is applied before the db
  exists and a delta's hash trailer is checked, and a failure stops the prefetch threads.
* When the data dir is for a cluster of several members, the replayed db is restored again by
  ``etcdutl`` for the real cluster, so that no member started here ever talks to the real peers.
* A point-in-time restore (``Chain.upto``) writes the rollback marker into the restored data dir
  before it is put in place (:mod:`.rollback`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import metrics
from ..config import RestorationConfig
from ..errors import ConfigError, EtcdbrError, IntegrityError, RestoreError
from ..fsutil import fsync_dir, fsync_tree
from ..snapshot import Snapshot, chain_gaps, latest_chain
from .bbolt import auth_enabled, set_auth_enabled
from .binaries import EtcdRelease, find_release
from .direct import DirectReplay, DirectUnsupported
from .embedded import EmbeddedEtcd, EmbeddedLimits
from .fetch import fetch_to_file
from .membership import cluster_size
from .pitr import Target, chain_for
from .progress import Progress
from .replay import COMPACT_EVERY, DeltaReplay, embedded_limits
from .rollback import write_marker

log = logging.getLogger(__name__)


@dataclass
class Chain:
    """What a restore applies: one full snapshot and the deltas after it, ascending."""

    full: Snapshot
    deltas: list[Snapshot] = field(default_factory=list)
    #: a point-in-time restore's target revision: the replay stops there (None: the chain's end)
    upto: int | None = None

    @property
    def last_revision(self) -> int:
        """The revision the restore reaches."""
        if self.upto is not None:
            return self.upto
        return self.deltas[-1].last_revision if self.deltas else self.full.last_revision



def _work_dir(temp_root: str) -> tuple[Path, bool]:
    """A private dir for this restore inside ``--restoration-temp-snapshots-dir`` (made 0700)."""
    root = Path(temp_root)
    created = not root.exists()
    try:
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="restore-", dir=root))
    except OSError as exc:
        raise RestoreError(f"cannot create temp dir in {root}: {exc.strerror or exc}") from exc
    return work, created


def _cleanup_work_dir(work: Path, root_created: bool) -> None:
    shutil.rmtree(work, ignore_errors=True)
    if root_created:
        try:
            work.parent.rmdir()
        except OSError:
            pass


def part_dir(data_dir: str | Path) -> Path:
    data = Path(os.path.abspath(data_dir))
    return data.with_name(data.name + ".part")


def swap_in(part: Path, data_dir: str | Path, why: str = "replaced") -> Path | None:
    """Put the complete ``part`` in place of ``data_dir``. The old data dir, if any, is moved
    aside and kept (see :mod:`.datadir`); returns where it went."""
    from .datadir import move_aside

    data = Path(os.path.abspath(data_dir))
    try:
        aside = move_aside(data, why)
    except OSError as exc:
        raise RestoreError(f"cannot move the old data dir {data} aside: {exc.strerror or exc} (it is untouched; the "
                           f"restored copy is left at {part})") from exc
    try:
        os.rename(part, data)
        fsync_dir(data.parent)
    except OSError as exc:
        where = f"; the old data dir is at {aside}" if aside else ""
        raise RestoreError(f"cannot move the restored data dir {part} into place at {data}: "
                           f"{exc.strerror or exc} (the restored copy is left at {part}{where})") from exc
    return aside



class Restorer:
    """Restore one store's latest chain into a data dir. Synchronous and blocking."""

    def __init__(self, store, config: RestorationConfig, *, progress: Progress | None = None,
                 release: EtcdRelease | None = None) -> None:
        self.store = store
        self.config = config
        self.progress = progress or Progress()
        self._release = release
        # etcd authentication in the full snapshot (None: not looked at yet); when on, the replay
        # runs with it switched off in the restored db, and ``auth_switched_off`` says so
        self.source_auth: bool | None = None
        self.auth_switched_off = False

    @property
    def release(self) -> EtcdRelease:
        if self._release is None:
            self._release = find_release(self.config.etcd_bin_dir)
        return self._release

    # -- public ----------------------------------------------------------------------------
    def latest(self) -> Chain | None:
        full, deltas = latest_chain(self.store.list())
        return Chain(full, deltas) if full is not None else None

    def plan(self, target: Target | None) -> Chain | None:
        """The chain to restore: the latest (None when the store holds no full snapshot), or the
        one that reaches ``target`` exactly (:mod:`.pitr`; an error when the store cannot)."""
        if target is None:
            return self.latest()
        return chain_for(self.store, target)

    def restore(self, data_dir: str | None = None, *, chain: Chain | None = None, replace: bool = False,
                judged=None) -> int | None:
        """Rebuild ``data_dir`` (default ``--data-dir``); returns the restored revision, or None
        when the store holds no full snapshot (nothing is touched then).

        A non-empty ``data_dir`` is refused unless ``replace``; even then one that etcd can open
        at the chain's revision or later is refused (:func:`.datadir.guard_replacement`;
        ``judged``: the caller's validation of it). A replaced one is moved aside and kept."""
        data_dir = data_dir or self.config.data_dir
        started = time.monotonic()
        ok = False
        try:
            chain = chain or self.latest()
            if chain is None:
                log.info("No base snapshot found. Will do nothing.", extra={"store": self.store.display})
                ok = True
                return None
            revision = self._restore(data_dir, chain, replace, judged)
            ok = True
            return revision
        finally:
            metrics.restoration_duration.labels(restore="single_node", succeeded=metrics.label_bool(ok)).observe(
                time.monotonic() - started)

    def _restore(self, data_dir: str, chain: Chain, replace: bool, judged) -> int:
        from ..configcheck import check_member_urls
        from .datadir import guard_replacement, is_empty, is_no_space, no_room, prune_asides, reason_word
        from .validator import DataDirLocked, _check_unlocked

        self.check_chain(chain)
        check_member_urls(self.config)  # what etcdutl would refuse, before anything is written
        data = Path(os.path.abspath(data_dir))
        try:  # swapping a data dir out from under a running etcd would lose whatever it writes next
            _check_unlocked(data / "member" / "snap" / "db")
        except DataDirLocked as exc:
            raise RestoreError(f"{exc}; stop it before restoring") from None
        if not is_empty(data):
            if not replace:
                raise ConfigError(f"--data-dir {data} is not empty: restore never overwrites a data dir unless "
                                  "--replace-data-dir=true is given (the old one is then moved aside and kept); "
                                  "nothing was changed")
            judged = guard_replacement(data, chain.last_revision, release=self.release, limits=self._limits(),
                                       judged=judged)
        self._check_room(data, chain)
        part = part_dir(data)
        work, root_created = _work_dir(self.config.temp_snapshots_dir)
        try:
            revision, member = self.build(part, chain, work)
            assert member is None
            if chain.upto is not None:  # a rollback: guard it against the old timeline (.rollback)
                write_marker(part, chain.upto, self.store.config, chain.full.snap_name)
            try:
                fsync_tree(part)
            except OSError as exc:
                raise RestoreError(f"cannot flush the restored data dir {part} to disk: {exc.strerror or exc}") from exc
            self._check_restored(part, chain, revision)
            aside = swap_in(part, data, reason_word(judged))
        except BaseException as exc:
            shutil.rmtree(part, ignore_errors=True)
            text = str(exc) if isinstance(exc, EtcdbrError) else getattr(exc, "strerror", None) or str(exc)
            # the data dir's volume (a full --restoration-temp-snapshots-dir elsewhere keeps its own error)
            if isinstance(exc, (OSError, EtcdbrError)) and is_no_space(text) and (
                    isinstance(exc, OSError) or str(data) in text):
                raise no_room(data, text) from exc
            raise
        finally:
            self.progress.close()
            _cleanup_work_dir(work, root_created)
        if aside is not None:
            prune_asides(data)
        self.progress.info(f"restore done at revision {revision}", revision=revision,
                           data_dir=str(data_dir), store=self.store.display,
                           **({"old_data_dir_kept_at": str(aside)} if aside else {}))
        return revision

    def _check_room(self, data: Path, chain: Chain) -> None:
        """Refuse early when the volume cannot even hold the full snapshot as stored (a lower
        bound of the restored db); a shortfall found later fails the restore the same way."""
        from .datadir import no_room

        if not chain.full.size:
            return
        try:
            free = shutil.disk_usage(data.parent if data.parent.exists() else data.parent.parent).free
        except OSError:
            return
        if free < chain.full.size:
            raise no_room(data, f"{free} bytes free, the full snapshot alone is {chain.full.size} bytes")

    def _check_restored(self, part: Path, chain: Chain, revision: int) -> None:
        """The restored data dir must check out before it replaces anything: its db opens, names
        this member, holds the revision the replay reached (at least the chain's last) and has
        authentication on exactly when the full snapshot had."""
        from .bbolt import CorruptDB, auth_enabled, read_etcd_db

        db = part / "member" / "snap" / "db"
        try:
            info = read_etcd_db(db)
            auth = auth_enabled(db)
        except (CorruptDB, OSError) as exc:
            raise RestoreError(f"the restored data dir {part} does not check out: {exc}") from exc
        problems = []
        if info.revision < chain.last_revision or (chain.deltas and info.revision != revision):
            problems.append(f"its revision is {info.revision}, expected {revision}")
        if self.config.name not in [m.get("name") for m in info.members]:
            problems.append(f"it does not record member {self.config.name!r}")
        if self.source_auth is not None and auth != self.source_auth:
            problems.append(f"authentication is {'on' if auth else 'off'} but was {'on' if self.source_auth else 'off'}"
                            " in the full snapshot")
        if problems:
            raise RestoreError(f"the restored data dir {part} does not check out: {'; '.join(problems)}")

    def check_chain(self, chain: Chain) -> None:
        gaps = chain_gaps(chain.full, chain.deltas)
        if gaps:
            expected, found = gaps[0]
            culprit = next(d for d in chain.deltas if d.start_revision == found)
            raise RestoreError(f"{self.store.display}: revision gap in the snapshot chain: revisions {expected}-"
                               f"{found - 1} are missing before object {culprit.key}")

    def build(self, target: Path, chain: Chain, work: Path, *, keep_running: bool = False
              ) -> tuple[int, EmbeddedEtcd | None]:
        """Restore ``chain`` into ``target`` (which must not exist yet; a stale one is removed).

        Returns the revision reached and, with ``keep_running``, the temporary member still
        running on ``target`` (the caller stops it); otherwise None.
        """
        release = self.release
        if target.exists():
            log.warning("removing an unfinished restore left by an earlier run", extra={"path": str(target)})
            shutil.rmtree(target)
        db = self._fetch_full(chain.full, work)
        self.auth_switched_off = False
        if not chain.deltas and not keep_running:
            self._restore_full(release, db, chain.full, target)
            db.unlink(missing_ok=True)
            self.source_auth = auth_enabled(target / "member" / "snap" / "db")
            return self._db_revision(release, target), None
        # A data dir restored for a multi-member cluster names the real peers, and a member
        # started on it talks to them: it would join a live cluster, or be sent entries it never
        # had. So a temporary member only ever runs on a one-member data dir, whose db is then
        # restored for the real cluster (the membership of a db to compact does not matter at all).
        multi = cluster_size(self.config.initial_cluster) > 1
        if chain.deltas and self.config.delta_replay == "direct":
            lone = multi and keep_running  # a member will run on it
            target_db = target / "member" / "snap" / "db"
            direct = self._direct(target_db, chain.upto)
            # The deltas are fetched and decoded while etcdutl (another process) restores the
            # full snapshot: the same memory bound as during the replay (DeltaPrefetch); nothing
            # is applied before the db exists and each delta's hash trailer checked. Closed on
            # every way out, so no thread outlives this.
            prefetch = direct.prefetch(chain.deltas, work).start()
            try:
                self._restore_full(release, db, chain.full, target, lone=lone)
                db.unlink(missing_ok=True)
                self.source_auth = auth_enabled(target_db)
                revision = direct.run(chain.deltas, work, prefetched=prefetch)
            except DirectUnsupported as exc:
                prefetch.close()
                log.warning("cannot write the deltas into the restored db directly; replaying them through a "
                            "temporary etcd instead", extra={"reason": str(exc)})
                if multi and not lone:  # the temporary member needs a one-member copy of it
                    db = work / "snapshot-restored.db"
                    shutil.move(str(target_db), db)
                    shutil.rmtree(target)
                    return self._build_through_etcd(target, chain, work, db, multi=True, keep_running=keep_running,
                                                    restored=True)
                return self._build_through_etcd(target, chain, work, None, multi=multi, keep_running=keep_running)
            finally:
                prefetch.close()
            if not keep_running:
                return revision, None
            self._switch_auth_off(target_db)  # the caller drives the member as no user
            member = EmbeddedEtcd(release, target, name=self.config.name, limits=self._limits(), work_dir=work)
            member.start()
            return revision, member
        return self._build_through_etcd(target, chain, work, db, multi=multi, keep_running=keep_running)

    def _build_through_etcd(self, target: Path, chain: Chain, work: Path, db: Path | None, *, multi: bool,
                            keep_running: bool, restored: bool = False) -> tuple[int, EmbeddedEtcd | None]:
        """Replay the deltas through a temporary etcd. ``db``: the full snapshot to restore first
        (``restored``: a db etcdutl already restored once, without hash trailer); None: ``target``
        already holds the full snapshot restored for a member that may run there."""
        release = self.release
        if chain.deltas:
            self.progress.info("replaying deltas through a temporary etcd", deltas=len(chain.deltas))
        replay = work / "replay.etcd" if multi and not keep_running else target
        if db is not None:
            self._restore_full(release, db, chain.full, replay, lone=multi, replayed=restored)
            db.unlink(missing_ok=True)
        replay_db = replay / "member" / "snap" / "db"
        self._switch_auth_off(replay_db)
        member = EmbeddedEtcd(release, replay, name=self.config.name, limits=self._limits(), work_dir=work)
        member.start()
        try:
            revision = self._apply_deltas(member, chain.deltas, work, chain.upto)
        except BaseException:
            member.stop()
            raise
        if keep_running:
            return revision, member
        member.stop()
        if self.auth_switched_off:
            set_auth_enabled(replay_db, True)
            log.info("switched etcd authentication back on in the restored data", extra={"db": str(replay_db)})
        if replay != target:
            try:
                self._restore_full(release, replay / "member" / "snap" / "db", chain.full, target, replayed=True)
            finally:
                shutil.rmtree(replay, ignore_errors=True)
        return revision, None

    def _switch_auth_off(self, db: Path) -> None:
        """The replay writes as no user, which a db with authentication on refuses (the Go tool
        disables auth on its embedded etcd for the same reason). Switched off in the db being
        built, before its temporary member starts; switched back on before anything uses it."""
        self.source_auth = auth_enabled(db)
        if self.source_auth:
            set_auth_enabled(db, False)
            self.auth_switched_off = True
            log.info("the backup has etcd authentication on: it is switched off in the restored data while the "
                     "temporary etcd works on it as no user, and back on before the data is used",
                     extra={"db": str(db)})

    # -- full snapshot -----------------------------------------------------------------------
    def _fetch_full(self, full: Snapshot, work: Path) -> Path:
        self.progress.info("fetching", snapshot=full.snap_name, store=self.store.display)
        path = work / "snapshot-full.db"
        self.progress.start_bytes("fetching " + full.snap_name, full.size)
        try:
            size = fetch_to_file(self.store, full, path, self.progress.add_bytes)
        except IntegrityError as exc:
            raise RestoreError(f"full snapshot {self.store.display} object {full.key}: {exc}") from exc
        finally:
            self.progress.close()
        log.debug("fetched full snapshot", extra={"bytes": size, "key": full.key})
        return path

    def _restore_full(self, release: EtcdRelease, db: Path, full: Snapshot, target: Path, *, lone: bool = False,
                      replayed: bool = False) -> None:
        """``etcdutl snapshot restore`` of ``db`` for the configured cluster; ``lone``: for a
        one-member cluster of its own on loopback; ``replayed``: ``db`` is a replay member's db
        (no hash trailer)."""
        cfg = self.config
        if not replayed:
            self.progress.info("restoring base snapshot", snapshot=full.snap_name, revision=full.last_revision,
                               etcdutl=release.version)
        cluster, token = cfg.initial_cluster, cfg.initial_cluster_token
        peers = ",".join(cfg.initial_advertise_peer_urls)
        if lone:  # never contacted: the replay member listens on ports of its own
            peers = "http://127.0.0.1:2380"
            cluster, token = f"{cfg.name}={peers}", f"{cfg.initial_cluster_token}-replay"
        cmd = [release.etcdutl, "snapshot", "restore", str(db),
               "--data-dir", str(target),
               "--name", cfg.name,
               "--initial-cluster", cluster,
               "--initial-cluster-token", token,
               "--initial-advertise-peer-urls", peers]
        if cfg.skip_hash_check or replayed:
            cmd.append("--skip-hash-check")
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            shutil.rmtree(target, ignore_errors=True)
            raise RestoreError(f"restoring full snapshot {self.store.display} object {full.key} failed: "
                               f"etcdutl: {_etcdutl_error(out.stderr or out.stdout)}")

    def _db_revision(self, release: EtcdRelease, target: Path) -> int:
        from .bbolt import read_etcd_db

        return read_etcd_db(target / "member" / "snap" / "db").revision

    # -- deltas (the engine is in .replay) -----------------------------------------------------
    def _limits(self) -> EmbeddedLimits:
        return embedded_limits(self.config)

    # Both engines take a point-in-time restore's target (``Chain.upto``) as their ``to_revision``.
    def _apply_deltas(self, member: EmbeddedEtcd, deltas: list[Snapshot], work: Path,
                      to_revision: int | None = None) -> int:
        return DeltaReplay(self.store, member, max_fetchers=self.config.max_fetchers,
                           progress=self.progress).run(deltas, work, to_revision=to_revision)

    def _direct(self, db: Path, to_revision: int | None = None) -> DirectReplay:
        return DirectReplay(self.store, db, max_fetchers=self.config.max_fetchers, progress=self.progress,
                            compact_every=COMPACT_EVERY, to_revision=to_revision)


def _etcdutl_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("Error:"):
            return ln[len("Error:"):].strip()
    for ln in reversed(lines):
        if '"error"' in ln or "\terror\t" in ln or "panic" in ln:
            return ln[-400:]
    return lines[-1][-400:] if lines else "no output"
