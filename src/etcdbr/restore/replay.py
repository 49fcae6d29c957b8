"""Replaying delta snapshots through a temporary etcd member, one transaction per source revision.

What the replay promises (the restore's orchestration is in :mod:`.restorer`):

* The restored keyspace gets the source's revisions (mod, create, version) and its current
  revision. After every transaction and every delta the member's revision must equal the
  source's; anything else is "mismatched event revision" naming the object. The replay resumes
  from the revision etcd reports, so revisions the data already holds are skipped, never applied
  twice.
* Two transactions are kept in flight, the second guarded so that it can only land right after
  the first (see :meth:`DeltaReplay._replay`).
* A revision the source wrote in one transaction lands as one revision here too, or every later
  revision would be off by one. When a revision has more operations than ``--max-txn-ops``, or is
  larger than ``--max-request-bytes``, the temporary member is restarted with limits just large
  enough for it (logged as a warning) instead of splitting it; the limits only bind the
  temporary member, never the cluster that later runs on the data dir.
* Every few deltas the member is compacted, and defragmented when its db nears its quota, so
  long chains fit in it; running out of quota once compacts and defragments, then retries.
* Deltas are fetched a bounded window ahead and decoded one ahead, in threads, while the
  current one is replayed.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import grpc

from ..config import RestorationConfig
from ..errors import EtcdbrError, RestoreError
from ..etcd import proto
from ..etcd.blocking import absent, delete_op, modified_at, put_op
from ..etcd.errors import describe
from ..snapshot import Snapshot
from .deltas import check_reached, deltas_up_to, prepared_deltas, still_to_apply, up_to
from .embedded import EmbeddedEtcd, EmbeddedLimits
from .progress import Progress

log = logging.getLogger(__name__)

# Every this many deltas the temporary member is compacted (and defragmented when its db nears
# the quota), as the Go restorer does, so long chains fit in the embedded quota.
COMPACT_EVERY = 10
DEFRAG_THRESHOLD = 0.8
# Room left in a request for etcd's own envelope around the transaction.
REQUEST_OVERHEAD = 64 * 1024
# Delta transactions kept in flight during the replay. All but the first after a pause carry a
# guard that holds only once their predecessor has applied, so they land in order or not at all
# (see DeltaReplay._replay). Measured with `bench/probe replay_order` (etcd 3.5.1, GOMAXPROCS=1, fsync
# off, 2 cores, 20,000 one-put revisions): one at a time 3,830 txn/s; 2 in flight 5,837/s (1 % of
# the guards failed and were resent); 3 in flight 3,802/s (14 % failed); 4 in flight 3,028/s. etcd
# starts a goroutine per request, and beyond two the order it applies them in is so often not the
# order they were sent in that the resends cost more than the overlap gains.
REPLAY_IN_FLIGHT = 2


def embedded_limits(cfg: RestorationConfig) -> EmbeddedLimits:
    """The temporary member's limits from the restoration flags (grown later when a revision needs it)."""
    return EmbeddedLimits(
        quota_bytes=cfg.embedded_etcd_quota_bytes,
        max_request_bytes=cfg.max_request_bytes,
        max_txn_ops=cfg.max_txn_ops,
        max_send_bytes=max(cfg.max_call_send_message_size, cfg.max_request_bytes + REQUEST_OVERHEAD),
        auto_compaction_mode=cfg.auto_compaction_mode,
        auto_compaction_retention=cfg.auto_compaction_retention,
    )


def _ops(events) -> list:
    from ..delta import EventType

    ops = []
    for ev in events:
        if ev.type == EventType.DELETE:
            ops.append(delete_op(ev.kv.key))
        else:  # a lease is a property of the source cluster's clients: it is dropped, as in Go
            ops.append(put_op(ev.kv.key, ev.kv.value))
    return ops


def _prepare(groups: list[tuple[int, list]]) -> list[tuple[int, int, list, proto.Compare]]:
    """One (revision, event count, ops, guard) per revision of a decoded delta."""
    return [(rev, len(group), _ops(group), _guard_after(rev, group)) for rev, group in groups]


def _guard_after(revision: int, events):
    """A compare that is false before ``revision`` (holding ``events``) is applied and true right
    after it: a key it puts was last modified at ``revision``, or a key it deletes is absent."""
    from ..delta import EventType

    for ev in events:
        if ev.type != EventType.DELETE:
            return modified_at(ev.kv.key, revision)
    return absent(events[0].kv.key)


class DeltaReplay:
    """Apply a store's deltas, in order, to the temporary ``member`` running on the data being
    restored. One instance per run: it remembers the guard of the last revision it applied."""

    def __init__(self, store, member: EmbeddedEtcd, *, max_fetchers: int, progress: Progress) -> None:
        self.store = store
        self.member = member
        self.max_fetchers = max_fetchers
        self.progress = progress
        self._next_guard: proto.Compare | None = None  # see _replay

    def run(self, deltas: list[Snapshot], work: Path, to_revision: int | None = None) -> int:
        """Replay ``deltas`` (downloaded into ``work``); returns the revision reached.
        ``to_revision``: a point-in-time restore's target; revisions after it are not applied, and
        the last delta must leave etcd exactly there."""
        deltas = deltas_up_to(deltas, to_revision)
        member = self.member
        assert member.client is not None
        revision = member.client.revision()
        self._next_guard = None  # nothing replayed yet: the first revision goes alone
        if not deltas:
            return revision
        total = len(deltas)
        stream = prepared_deltas(self.store, deltas, work, max_fetchers=self.max_fetchers, progress=self.progress,
                                 prepare=_prepare)
        try:
            for i, delta, groups, where in stream:
                if not self.progress.interactive:
                    self.progress.delta_done(i + 1, total, snapshot=delta.snap_name, revision=delta.last_revision)
                revision = self._apply_one(delta, up_to(groups, to_revision), revision, first=i == 0, where=where,
                                           to_revision=to_revision)
                del groups
                if self.progress.interactive:
                    self.progress.delta_done(i + 1, total, revision=revision)
                if (i + 1) % COMPACT_EVERY == 0 and i + 1 < total:
                    self._maintain(revision)
        finally:
            stream.close()
            self.progress.close()
        return revision

    # -- one delta ---------------------------------------------------------------------------
    def _apply_one(self, delta: Snapshot, prepared: list, revision: int, *, first: bool, where: str,
                   to_revision: int | None = None) -> int:
        groups = still_to_apply(delta, prepared, revision, first=first, where=where,
                                count_of=lambda item: item[1])
        if groups is None:
            return revision
        if groups:
            revision = self._replay([(rev, ops, guard) for rev, _count, ops, guard in groups], revision, where)
        assert self.member.client is not None
        actual = self.member.client.revision()
        check_reached(delta, actual, where, to_revision=to_revision)
        return actual

    # -- the pipelined, guarded transactions ----------------------------------------------------
    def _replay(self, groups: list[tuple[int, list, proto.Compare]], revision: int, where: str) -> int:
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
        member = self.member
        first = groups[0][0]
        guard = self._next_guard  # holds once ``revision`` is applied (None: unknown)
        inflight: deque = deque()
        i = 0
        while i < len(groups) or inflight:
            while i < len(groups) and len(inflight) < REPLAY_IN_FLIGHT:
                rev, ops, after = groups[i]
                if guard is None or self._limit_changes(ops):
                    if inflight:
                        break  # goes alone, once the ones in flight have landed
                    revision = self._apply_revision(rev, ops, where)
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

    # -- one revision alone: limits, quota -------------------------------------------------------
    def _limit_changes(self, ops: list) -> dict:
        """The temporary member's limits one revision's txn would exceed (empty: it fits)."""
        lim = self.member.limits
        changes = {}
        if len(ops) > lim.max_txn_ops:
            changes["max_txn_ops"] = len(ops)
        approx = sum(len(op.request_put.key) + len(op.request_put.value) + len(op.request_delete_range.key) + 16
                     for op in ops)
        if approx + REQUEST_OVERHEAD > lim.max_request_bytes * 0.5:
            size = proto.TxnRequest(success=ops).ByteSize()
            if size + REQUEST_OVERHEAD > lim.max_request_bytes:
                changes["max_request_bytes"] = size + REQUEST_OVERHEAD
                changes["max_send_bytes"] = max(lim.max_send_bytes, size + 2 * REQUEST_OVERHEAD)
        return changes

    def _fit(self, rev: int, ops: list) -> None:
        """Raise the temporary member's limits when one revision would not fit in one txn."""
        changes = self._limit_changes(ops)
        if changes:
            log.warning("revision does not fit the temporary etcd's limits; restarting it with larger ones so that "
                        "it lands as one revision", extra={"revision": rev, "ops": len(ops), **changes})
            self.member.restart(**changes)

    def _apply_revision(self, rev: int, ops: list, where: str) -> int:
        member = self.member
        self._fit(rev, ops)
        for attempt in (1, 2):
            assert member.client is not None
            try:
                resp = member.client.txn(ops)
                break
            except grpc.RpcError as exc:
                text = describe(exc)
                if "space exceeded" in text and attempt == 1:
                    log.warning("temporary etcd ran out of quota; compacting and defragmenting",
                                extra={"revision": rev - 1})
                    self._maintain(rev - 1, force_defrag=True)
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

    def _maintain(self, revision: int, force_defrag: bool = False) -> None:
        client = self.member.client
        assert client is not None
        try:
            client.compact(revision, physical=True)
        except EtcdbrError as exc:
            if "compacted" not in str(exc):
                raise
        size = client.status().dbSize
        if force_defrag or size > DEFRAG_THRESHOLD * self.member.limits.quota_bytes:
            log.info("defragmenting the temporary etcd", extra={"db_size": size})
            client.defragment(timeout=600)
            client.disarm_nospace()
