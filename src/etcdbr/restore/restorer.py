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
* Deltas are replayed through a temporary etcd member on the ``.part`` dir, one transaction per
  source revision, so the restored keyspace has the source's revisions (mod, create, version)
  and its current revision. After every transaction and every delta the member's revision must
  equal the source's; anything else is "mismatched event revision" naming the object. Two
  transactions are kept in flight, the second guarded so that it can only land right after the
  first (see :meth:`Restorer._replay`).
* A revision the source wrote in one transaction must land as one revision here too, or every
  later revision would be off by one. When a revision has more operations than
  ``--max-txn-ops``, or is larger than ``--max-request-bytes``, the temporary member is restarted
  with limits just large enough for it (logged as a warning) instead of splitting it; the limits
  only bind the temporary member, never the cluster that later runs on the data dir.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import grpc

from .. import metrics
from ..config import RestorationConfig
from ..fsutil import fsync_dir, fsync_tree
from ..readahead import ReadAhead
from ..errors import ConfigError, EtcdbrError, IntegrityError, RestoreError, StoreError
from ..snapshot import Snapshot, chain_gaps, latest_chain
from .bbolt import auth_enabled, set_auth_enabled
from .binaries import EtcdRelease, find_release
from .embedded import EmbeddedEtcd, EmbeddedLimits
from .etcdkv import absent, delete_op, modified_at, put_op, rpc_error_text
from .membership import cluster_size
from .progress import Progress

log = logging.getLogger(__name__)

COPY_BUFFER = 1024 * 1024
# Every this many deltas the temporary member is compacted (and defragmented when its db nears
# the quota), as the Go restorer does, so long chains fit in the embedded quota.
COMPACT_EVERY = 10
DEFRAG_THRESHOLD = 0.8
# Room left in a request for etcd's own envelope around the transaction.
REQUEST_OVERHEAD = 64 * 1024
# Delta transactions kept in flight during the replay. All but the first after a pause carry a
# guard that holds only once their predecessor has applied, so they land in order or not at all
# (see Restorer._replay). Measured with `bench/probe replay_order` (etcd 3.5.1, GOMAXPROCS=1, fsync
# off, 2 cores, 20,000 one-put revisions): one at a time 3,830 txn/s; 2 in flight 5,837/s (1 % of
# the guards failed and were resent); 3 in flight 3,802/s (14 % failed); 4 in flight 3,028/s. etcd
# starts a goroutine per request, and beyond two the order it applies them in is so often not the
# order they were sent in that the resends cost more than the overlap gains.
REPLAY_IN_FLIGHT = 2


@dataclass
class Chain:
    """What a restore applies: one full snapshot and the deltas after it, ascending."""

    full: Snapshot
    deltas: list[Snapshot] = field(default_factory=list)

    @property
    def last_revision(self) -> int:
        return self.deltas[-1].last_revision if self.deltas else self.full.last_revision


class CountingReader:
    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self.on_bytes(len(data))
        return data

    def close(self) -> None:
        self.raw.close()


def _decompressing(raw: BinaryIO, snapshot: Snapshot) -> BinaryIO:
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


def _group_by_revision(events) -> list[tuple[int, list]]:
    groups: list[tuple[int, list]] = []
    for ev in events:
        rev = ev.kv.mod_revision
        if groups and groups[-1][0] == rev:
            groups[-1][1].append(ev)
        else:
            groups.append((rev, [ev]))
    return groups


def _ops(events) -> list:
    from ..delta import EventType

    ops = []
    for ev in events:
        if ev.type == EventType.DELETE:
            ops.append(delete_op(ev.kv.key))
        else:  # a lease is a property of the source cluster's clients: it is dropped, as in Go
            ops.append(put_op(ev.kv.key, ev.kv.value))
    return ops


def _guard_after(revision: int, events):
    """A compare that is false before ``revision`` (holding ``events``) is applied and true right
    after it: a key it puts was last modified at ``revision``, or a key it deletes is absent."""
    from ..delta import EventType

    for ev in events:
        if ev.type != EventType.DELETE:
            return modified_at(ev.kv.key, revision)
    return absent(events[0].kv.key)


def embedded_limits(cfg: RestorationConfig) -> EmbeddedLimits:
    return EmbeddedLimits(
        quota_bytes=cfg.embedded_etcd_quota_bytes,
        max_request_bytes=cfg.max_request_bytes,
        max_txn_ops=cfg.max_txn_ops,
        max_send_bytes=max(cfg.max_call_send_message_size, cfg.max_request_bytes + REQUEST_OVERHEAD),
        auto_compaction_mode=cfg.auto_compaction_mode,
        auto_compaction_retention=cfg.auto_compaction_retention,
    )


class Restorer:
    """Restore one store's latest chain into a data dir. Synchronous and blocking."""

    def __init__(self, store, config: RestorationConfig, *, progress: Progress | None = None,
                 release: EtcdRelease | None = None) -> None:
        self.store = store
        self.config = config
        self.progress = progress or Progress()
        self._release = release
        self._next_guard = None  # see _replay
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
        from .datadir import (guard_replacement, is_empty, is_no_space, no_room, prune_asides, reason_word)
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
        # had. So deltas are replayed on a one-member data dir, whose db is then restored for
        # the real cluster (the membership of a db to compact does not matter at all).
        multi = cluster_size(self.config.initial_cluster) > 1
        replay = work / "replay.etcd" if multi and not keep_running else target
        self._restore_full(release, db, chain.full, replay, lone=multi)
        db.unlink(missing_ok=True)
        replay_db = replay / "member" / "snap" / "db"
        self._switch_auth_off(replay_db)
        member = EmbeddedEtcd(release, replay, name=self.config.name, limits=self._limits(), work_dir=work)
        member.start()
        try:
            revision = self._apply_deltas(member, chain.deltas, work)
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
            log.info("the backup has etcd authentication on: replaying the deltas with it switched off in the "
                     "restored data; it is switched back on before the data dir is used", extra={"db": str(db)})

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

    # -- deltas ------------------------------------------------------------------------------
    def _limits(self) -> EmbeddedLimits:
        return embedded_limits(self.config)

    def _fetch_delta(self, delta: Snapshot, path: Path) -> Path:
        fetch_to_file(self.store, delta, path)
        return path

    def _prepare_delta(self, fetched: Future, where: str) -> list[tuple[int, int, list, object]]:
        """Wait for a fetched delta, verify and decode it, and turn it into one (revision, event
        count, ops, guard) per revision. Runs in a thread of its own, one delta ahead of the replay."""
        from ..delta import decode_delta

        try:
            path = fetched.result()
        except IntegrityError as exc:
            raise RestoreError(f"delta snapshot {where}: {exc}") from exc
        payload = path.read_bytes()
        path.unlink(missing_ok=True)
        try:
            events = decode_delta(payload)
        except IntegrityError as exc:
            raise RestoreError(f"delta snapshot {where} failed verification: {exc}") from exc
        del payload
        return [(rev, len(group), _ops(group), _guard_after(rev, group)) for rev, group in _group_by_revision(events)]

    def _apply_deltas(self, member: EmbeddedEtcd, deltas: list[Snapshot], work: Path) -> int:
        assert member.client is not None
        revision = member.client.revision()
        self._next_guard = None  # nothing replayed yet: the first revision goes alone
        if not deltas:
            return revision
        total = len(deltas)
        window = max(1, min(self.config.max_fetchers, total))
        self.progress.info("fetching", deltas=total, parallel=window, store=self.store.display)
        self.progress.start_deltas(total)
        pool = ThreadPoolExecutor(max_workers=window, thread_name_prefix="delta-fetch")
        # Decoding (JSON, base64) is most of the replay's own CPU: done for the next delta while
        # the current one is replayed, it overlaps the wait for etcd. One ahead bounds memory.
        decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-decode")
        pending: dict[int, Future] = {}
        prepared: Future | None = None

        def where_of(i: int) -> str:
            return f"{self.store.display} object {deltas[i].key}"

        try:
            # A bounded look-ahead: at most ``window`` deltas are downloaded and not yet applied.
            for i in range(window):
                pending[i] = pool.submit(self._fetch_delta, deltas[i], work / f"delta-{i:06d}")
            prepared = decoder.submit(self._prepare_delta, pending.pop(0), where_of(0))
            for i, delta in enumerate(deltas):
                where = where_of(i)
                groups = prepared.result()
                if i + window < total:
                    pending[i + window] = pool.submit(self._fetch_delta, deltas[i + window],
                                                      work / f"delta-{i + window:06d}")
                prepared = (decoder.submit(self._prepare_delta, pending.pop(i + 1), where_of(i + 1))
                            if i + 1 < total else None)
                if not self.progress.interactive:
                    self.progress.delta_done(i + 1, total, snapshot=delta.snap_name, revision=delta.last_revision)
                revision = self._apply_one(member, delta, groups, revision, first=i == 0, where=where)
                del groups
                if self.progress.interactive:
                    self.progress.delta_done(i + 1, total, revision=revision)
                if (i + 1) % COMPACT_EVERY == 0 and i + 1 < total:
                    self._maintain(member, revision)
        finally:
            for fut in pending.values():
                fut.cancel()
            if prepared is not None:
                prepared.cancel()
            decoder.shutdown(wait=True, cancel_futures=True)
            pool.shutdown(wait=True, cancel_futures=True)
            self.progress.close()
        return revision

    def _apply_one(self, member: EmbeddedEtcd, delta: Snapshot, prepared: list, revision: int, *, first: bool,
                   where: str) -> int:
        if delta.last_revision <= revision:
            log.info("skipping delta already contained in the restored data", extra={
                "snapshot": delta.snap_name, "revision": revision})
            return revision
        skipped = 0
        groups: list[tuple[int, list, object]] = []
        for group_rev, count, ops, guard in prepared:
            if group_rev <= revision:
                skipped += count
                continue
            expected = revision + len(groups) + 1
            if group_rev != expected:
                raise RestoreError(f"mismatched event revision in delta snapshot {where}: next event is at "
                                   f"revision {group_rev} but the restored data is at revision {expected - 1}")
            groups.append((group_rev, ops, guard))
        if groups:
            revision = self._replay(member, groups, revision, where)
        if skipped and not first:
            log.warning("delta overlaps revisions already restored; skipped those events",
                        extra={"snapshot": delta.snap_name, "events": skipped})
        assert member.client is not None
        actual = member.client.revision()
        if actual != delta.last_revision:
            raise RestoreError(f"mismatched event revision after delta snapshot {where}: etcd is at revision "
                               f"{actual}, the snapshot ends at revision {delta.last_revision}")
        return actual

    def _replay(self, member: EmbeddedEtcd, groups: list[tuple[int, list, object]], revision: int,
                where: str) -> int:
        """Apply ``groups`` (consecutive revisions after ``revision``: ops, guard) as one
        transaction each, up to REPLAY_IN_FLIGHT at a time; returns the revision reached.

        Each pipelined transaction carries the guard of the revision before it, so it applies
        only right after its predecessor; one that arrives first fails its compare, writes
        nothing and consumes no revision. A transaction is never sent again before its previous
        attempt is known to have failed, so none applies twice. After a failure everything in
        flight is awaited, the replay continues from the revision etcd reports, and the next
        revision goes alone through :meth:`_apply_revision` (which handles quota and limits), so
        the replay always makes progress or stops with that revision's error.
        """
        first = groups[0][0]
        guard = self._next_guard  # holds once ``revision`` is applied (None: unknown)
        inflight: deque = deque()
        i = 0
        while i < len(groups) or inflight:
            while i < len(groups) and len(inflight) < REPLAY_IN_FLIGHT:
                rev, ops, after = groups[i]
                if guard is None or self._limit_changes(member, ops):
                    if inflight:
                        break  # goes alone, once the ones in flight have landed
                    revision = self._apply_revision(member, rev, ops, where)
                else:  # member.client afresh each time: a restart for larger limits replaces it
                    assert member.client is not None
                    inflight.append((rev, member.client.txn_future(ops, [guard])))
                guard = after
                i += 1
            if not inflight:
                continue
            rev, future = inflight.popleft()
            try:
                resp = future.result()
                applied = resp.succeeded
            except grpc.RpcError:
                applied = False
            if applied:
                if resp.header.revision != rev:
                    raise RestoreError(f"mismatched event revision in delta snapshot {where}: applying revision "
                                       f"{rev} left etcd at revision {resp.header.revision}")
                revision = rev
                continue
            for _, other in inflight:
                try:
                    other.result()
                except grpc.RpcError:
                    pass
            inflight.clear()
            assert member.client is not None
            reached = member.client.revision()
            if not revision <= reached <= groups[i - 1][0]:
                raise RestoreError(f"mismatched event revision in delta snapshot {where}: etcd is at revision "
                                   f"{reached} while revisions {revision + 1}-{groups[i - 1][0]} were being applied")
            log.debug("replay resumes after an out-of-order or failed transaction",
                      extra={"revision": reached, "failed": rev})
            revision = reached
            i = reached - first + 1
            guard = None
        self._next_guard = guard
        return revision

    def _limit_changes(self, member: EmbeddedEtcd, ops: list) -> dict:
        """The temporary member's limits one revision's txn would exceed (empty: it fits)."""
        from aetcd.rpc import rpc_pb2 as pb

        lim = member.limits
        changes = {}
        if len(ops) > lim.max_txn_ops:
            changes["max_txn_ops"] = len(ops)
        approx = sum(len(op.request_put.key) + len(op.request_put.value) + len(op.request_delete_range.key) + 16
                     for op in ops)
        if approx + REQUEST_OVERHEAD > lim.max_request_bytes * 0.5:
            size = pb.TxnRequest(success=ops).ByteSize()
            if size + REQUEST_OVERHEAD > lim.max_request_bytes:
                changes["max_request_bytes"] = size + REQUEST_OVERHEAD
                changes["max_send_bytes"] = max(lim.max_send_bytes, size + 2 * REQUEST_OVERHEAD)
        return changes

    def _fit(self, member: EmbeddedEtcd, rev: int, ops: list) -> None:
        """Raise the temporary member's limits when one revision would not fit in one txn."""
        changes = self._limit_changes(member, ops)
        if changes:
            log.warning("revision does not fit the temporary etcd's limits; restarting it with larger ones so that "
                        "it lands as one revision", extra={"revision": rev, "ops": len(ops), **changes})
            member.restart(**changes)

    def _apply_revision(self, member: EmbeddedEtcd, rev: int, ops: list, where: str) -> int:
        self._fit(member, rev, ops)
        for attempt in (1, 2):
            assert member.client is not None
            try:
                resp = member.client.txn(ops)
                break
            except grpc.RpcError as exc:
                text = rpc_error_text(exc)
                if "space exceeded" in text and attempt == 1:
                    log.warning("temporary etcd ran out of quota; compacting and defragmenting",
                                extra={"revision": rev - 1})
                    self._maintain(member, rev - 1, force_defrag=True)
                    continue
                if "space exceeded" in text:
                    raise RestoreError(f"replaying revision {rev} of delta snapshot {where} failed: the temporary "
                                       f"etcd's quota (--embedded-etcd-quota-bytes={member.limits.quota_bytes}) is "
                                       f"too small for the restored data") from exc
                if "user name is empty" in text or "permission denied" in text.lower():
                    raise RestoreError(f"cannot replay {where}: the restored data has etcd authentication enabled "
                                       f"({text})") from exc
                raise RestoreError(f"replaying revision {rev} of delta snapshot {where} failed: {text}") from exc
        if resp.header.revision != rev:
            raise RestoreError(f"mismatched event revision in delta snapshot {where}: applying revision {rev} "
                               f"left etcd at revision {resp.header.revision}")
        return rev

    def _maintain(self, member: EmbeddedEtcd, revision: int, force_defrag: bool = False) -> None:
        client = member.client
        assert client is not None
        try:
            client.compact(revision, physical=True)
        except EtcdbrError as exc:
            if "compacted" not in str(exc):
                raise
        size = client.status().dbSize
        if force_defrag or size > DEFRAG_THRESHOLD * member.limits.quota_bytes:
            log.info("defragmenting the temporary etcd", extra={"db_size": size})
            client.defragment(timeout=600)
            client.disarm_nospace()


def _etcdutl_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("Error:"):
            return ln[len("Error:"):].strip()
    for ln in reversed(lines):
        if '"error"' in ln or "\terror\t" in ln or "panic" in ln:
            return ln[-400:]
    return lines[-1][-400:] if lines else "no output"
