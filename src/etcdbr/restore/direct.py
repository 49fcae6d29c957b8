"""Replaying delta snapshots straight into the restored db file, without an etcd in between.

The replay through a temporary etcd (:mod:`.replay`) is bound by etcd's cost per transaction
and the round trip of each: one source revision is one transaction. This engine writes what
those transactions would have written, in etcd's own format, into a fresh copy of the db that
``etcdutl snapshot restore`` produced:

* etcd keeps its keyspace in the bbolt bucket ``key``, one entry per change, keyed by the
  revision (8-byte big-endian main revision, ``_``, 8-byte sub revision; a deletion is a
  tombstone: the same 17 bytes and ``t``) with an ``mvccpb.KeyValue`` protobuf as value (a
  tombstone's holds only the key). A put of revision ``r`` gets ``mod_revision`` ``r``, keeps the
  key's ``create_revision`` and adds one to its ``version`` while the key exists, or starts both
  afresh; its lease is dropped, as in the Go tool. The ``n``-th change of a transaction has sub
  revision ``n``. A delete of a key that does not exist changes nothing, as in etcd, and a
  revision that would change nothing is an error (through etcd it would leave every later
  revision off by one). Two puts of one key in one revision, or a put and a delete of it, are
  refused as etcd refuses that transaction.
* What etcd derives at start-up from the key bucket (its index, the current revision) follows
  from the entries; the ``meta`` bucket's consistent index and term stay as ``etcdutl`` wrote them,
  matching the WAL and snap files it created (nothing here goes through raft); the ``members``,
  ``cluster``, ``lease``, ``auth*``, ``alarm`` and every other bucket are copied unchanged (an
  alarm raised in the backup stays raised, as ``etcdutl`` leaves it for a full snapshot alone).
  Authentication needs no switching off: no request is made.
* Compaction follows the replay through etcd: where that replay compacts the temporary member
  (after every :data:`.replay.COMPACT_EVERY` deltas but the last) the revisions etcd's compaction
  removes are left out here (and ``scheduledCompactRev``/``finishedCompactRev`` are set).
  Compaction at a later revision removes everything an earlier one does, so only the last one
  matters. A compaction the full snapshot caught half done is left to etcd, which finishes it
  when it starts (the temporary etcd does the same).
* With ``to_revision`` (point-in-time restore) the replay stops there, as the replay through
  etcd does with the same bound (:func:`.deltas.deltas_up_to`, :func:`.deltas.up_to`): deltas
  starting above it are not fetched, compaction points follow the shortened chain, and the
  restored revision is the bound (or the chain's end when that comes first).
* The new db is a complete bbolt file written beside the old one (:mod:`.boltwrite`), fsynced and
  renamed over it: a failure at any point leaves the db ``etcdutl`` restored as it was.

The result is checked in the tests against the replay through etcd by etcd's own hash of the
keyspace (``HashKV``) from a real etcd started on each. Anything this engine does not handle (a
db that is not etcd's, nested buckets, keys or values of the ``key`` bucket that are not etcd's)
raises :class:`DirectUnsupported` before anything changed, and the restore replays through etcd
instead.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from google.protobuf.message import DecodeError

from ..errors import RestoreError
from ..etcd import proto
from ..fsutil import fsync_dir
from ..snapshot import Snapshot
from .bbolt import BUCKET_LEAF, BoltReader, CorruptDB
from .boltwrite import BoltWriter, TreeWriter
from .deltas import DeltaPrefetch, check_reached, deltas_up_to, prepared_deltas, still_to_apply, up_to
from .progress import Progress

log = logging.getLogger(__name__)

KEY_BUCKET, META_BUCKET = b"key", b"meta"
FINISHED_COMPACT, SCHEDULED_COMPACT = b"finishedCompactRev", b"scheduledCompactRev"
_REV = struct.Struct(">Q")
_REV_KEY = struct.Struct(">Q1sQ")
_SPILL = struct.Struct("<QQBII")  # main, sub, tombstone, key length, value length


class DirectUnsupported(Exception):
    """The restored db holds something this engine does not handle; nothing was changed."""


def revision_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's key of a change in the ``key`` bucket."""
    return _REV.pack(main) + b"_" + _REV.pack(sub) + (b"t" if tombstone else b"")


def parse_revision_key(raw: bytes) -> tuple[int, int, bool]:
    """(main, sub, tombstone) of a ``key`` bucket key; DirectUnsupported for anything else."""
    size = len(raw)
    if size == 17 or (size == 18 and raw[17] == 0x74):
        main, mark, sub = _REV_KEY.unpack_from(raw)
        if mark == b"_":
            return main, sub, size == 18
    raise DirectUnsupported(f"unexpected key {raw[:32].hex()} in etcd's key bucket")


def encode_kv(key: bytes, value: bytes, create: int, mod: int, version: int) -> bytes:
    """An ``mvccpb.KeyValue`` as etcd marshals it (no lease: dropped by the replay)."""
    return proto.KeyValue(key=key, value=value, create_revision=create, mod_revision=mod,
                          version=version).SerializeToString()


def _tombstone_value(key: bytes) -> bytes:
    return proto.KeyValue(key=key).SerializeToString()


def _meta_revision(meta: dict[bytes, bytes], name: bytes) -> int:
    raw = meta.get(name)
    return _REV.unpack_from(raw)[0] if raw and len(raw) >= 8 else 0


class KeyIndex:
    """What etcd's in-memory key index tells a write: per key ``(create, version, mod main,
    mod sub)`` of its last change, ``create == 0`` once deleted. Loaded from the bucket the way
    etcd restores its index (the first entry of a key gives its create revision and version,
    each later put adds a version, a tombstone ends the generation)."""

    __slots__ = ("keys",)

    def __init__(self) -> None:
        self.keys: dict[bytes, tuple[int, int, int, int]] = {}

    def load_leaf(self, items: list[tuple[bytes, bytes, int]]) -> int:
        """Load one leaf's elements of the ``key`` bucket, in order; returns the last main
        revision (0: none). One loop for every entry of the db: kept tight."""
        keys = self.keys
        get = keys.get
        parse = proto.KeyValue.FromString
        unpack = _REV_KEY.unpack_from
        main = 0
        try:
            for raw, value, flags in items:
                if flags & BUCKET_LEAF:
                    raise DirectUnsupported("nested bucket in etcd's key bucket")
                size = len(raw)
                if not (size == 17 or (size == 18 and raw[17] == 0x74)):
                    parse_revision_key(raw)  # raises DirectUnsupported, naming the key
                main, mark, sub = unpack(raw)
                if mark != b"_":
                    parse_revision_key(raw)  # raises
                kv = parse(value)
                key = kv.key
                known = get(key)
                if size == 18:  # a tombstone ends the key's generation (ignored when none is open)
                    if known is None or known[0]:
                        keys[key] = (0, 0, main, sub)
                elif known is None:
                    keys[key] = (kv.create_revision, kv.version, main, sub)
                elif known[0]:
                    keys[key] = (known[0], known[1] + 1, main, sub)
                else:
                    keys[key] = (main, 1, main, sub)
        except DecodeError as exc:
            raise DirectUnsupported(f"unreadable KeyValue at revision {main}: {exc}") from exc
        return main

    def kept(self, key: bytes, main: int, sub: int) -> bool:
        """Whether a compaction at the current revision keeps the change (main, sub) of ``key``:
        only a key's last change, and only while the key exists."""
        known = self.keys.get(key)
        return known is not None and known[0] != 0 and known[2] == main and known[3] == sub


class _Spill:
    """Changes held back until the compaction that may drop some of them (a file in the work dir)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: BinaryIO = open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600), "w+b",
                                   buffering=1024 * 1024)

    def add(self, main: int, sub: int, tombstone: bool, key: bytes, value: bytes) -> None:
        self.file.write(_SPILL.pack(main, sub, tombstone, len(key), len(value)))
        self.file.write(key)
        self.file.write(value)

    def read(self) -> Iterator[tuple[int, int, bool, bytes, bytes]]:
        self.file.flush()
        self.file.seek(0)
        reader = self.file
        while True:
            head = reader.read(_SPILL.size)
            if not head:
                return
            main, sub, tombstone, klen, vlen = _SPILL.unpack(head)
            key = reader.read(klen)
            yield main, sub, bool(tombstone), key, reader.read(vlen)

    def close(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _as_is(groups: list[tuple[int, list]]) -> list[tuple[int, list]]:
    return groups


class DirectReplay:
    """Apply a store's deltas, in order, to the etcd db file ``db`` (no process may have it open)."""

    def __init__(self, store, db: Path, *, max_fetchers: int, progress: Progress, compact_every: int,
                 to_revision: int | None = None) -> None:
        self.store = store
        self.db = Path(db)
        self.max_fetchers = max_fetchers
        self.progress = progress
        self.compact_every = compact_every
        # point-in-time restore: no revision above this one is applied (None: the whole chain)
        self.to_revision = to_revision
        self.index = KeyIndex()
        self.revision = 0
        self._keys: TreeWriter | None = None
        self._spill: _Spill | None = None
        self._prefetched: DeltaPrefetch[tuple[int, list]] | None = None

    def prefetch(self, deltas: list[Snapshot], work: Path) -> DeltaPrefetch[tuple[int, list]]:
        """The fetching and decoding of the deltas :meth:`run` applies, to start before the db
        exists (the caller closes it); :meth:`run` takes it as ``prefetched``."""
        return DeltaPrefetch(self.store, deltas_up_to(deltas, self.to_revision), work,
                             max_fetchers=self.max_fetchers, progress=self.progress, prepare=_as_is)

    def run(self, deltas: list[Snapshot], work: Path, prefetched: DeltaPrefetch[tuple[int, list]] | None = None) -> int:
        """Replay ``deltas`` (downloaded into ``work``, or by ``prefetched``: :meth:`prefetch`
        of the same deltas) into the db, up to ``to_revision`` when given; returns the revision
        reached."""
        deltas = deltas_up_to(deltas, self.to_revision)
        if prefetched is not None and prefetched.deltas != deltas:
            raise ValueError("the prefetched deltas are not the ones to replay")
        self._prefetched = prefetched
        self.progress.info("replaying deltas directly into the restored db", deltas=len(deltas), db=str(self.db))
        tmp = self.db.with_name(self.db.name + ".direct")
        try:
            src = BoltReader.open(self.db)
        except CorruptDB as exc:
            raise DirectUnsupported(f"the restored db cannot be read: {exc}") from exc
        try:
            out = BoltWriter(tmp, src.meta.page_size, txid=src.meta.txid + 1)
            try:
                revision = self._replay(src, out, deltas, work)
                out.finish()
            except BaseException:
                out.close()
                tmp.unlink(missing_ok=True)
                raise
            finally:
                if self._spill is not None:
                    self._spill.close()
                    self._spill = None
        except CorruptDB as exc:
            raise DirectUnsupported(f"the restored db cannot be read: {exc}") from exc
        finally:
            src.close()
        os.replace(tmp, self.db)
        fsync_dir(self.db.parent)
        return revision

    # -- the db --------------------------------------------------------------------------------
    def _replay(self, src: BoltReader, out: BoltWriter, deltas: list[Snapshot], work: Path) -> int:
        names = src.bucket_names()
        if KEY_BUCKET not in names or META_BUCKET not in names:
            raise DirectUnsupported("not an etcd db (no key or meta bucket)")
        meta = {}
        for key, value, flags in src.elements(META_BUCKET):
            if flags & BUCKET_LEAF:
                raise DirectUnsupported("nested bucket in etcd's meta bucket")
            meta[key] = value
        # everything but key and meta is copied as is, first: a nested bucket is refused before work
        for name in sorted(names):
            if name not in (KEY_BUCKET, META_BUCKET):
                out.bucket(name, self._plain(src, name), sequence=src.bucket_sequence(name))
        finished = _meta_revision(meta, FINISHED_COMPACT)
        # a compaction the full snapshot caught half done (scheduled above finished) is left to
        # etcd, which finishes it as soon as it starts, as the temporary etcd does
        scheduled = _meta_revision(meta, SCHEDULED_COMPACT)
        # the replay through etcd compacts after every compact_every deltas but the last
        points = [i for i in range(len(deltas)) if (i + 1) % self.compact_every == 0 and i + 1 < len(deltas)]
        flush_after = points[-1] if points else None

        self._keys = out.open_bucket(KEY_BUCKET, sequence=src.bucket_sequence(KEY_BUCKET))
        # without a compaction to come, the db's own changes go first and as they are
        last = self._load(src, copy=flush_after is None)
        self.revision = max(1, last, finished, scheduled)
        compacted = max(finished, scheduled)
        bound = self.to_revision
        if bound is not None and bound < self.revision:
            raise RestoreError(f"cannot restore to revision {bound}: the full snapshot is already at revision "
                               f"{self.revision}")
        if flush_after is not None:
            self._spill = _Spill(work / "direct-replay.spill")

        total = len(deltas)
        stream = self._stream(deltas, work)
        try:
            for i, delta, groups, where in stream:
                if not self.progress.interactive:
                    self.progress.delta_done(i + 1, total, snapshot=delta.snap_name, revision=delta.last_revision)
                todo = still_to_apply(delta, up_to(groups, bound), self.revision, first=i == 0, where=where)
                del groups
                if todo is not None:
                    for rev, events in todo:
                        self._apply(rev, events, where)
                    check_reached(delta, self.revision, where, holder="the restored data", to_revision=bound)
                if self.progress.interactive:
                    self.progress.delta_done(i + 1, total, revision=self.revision)
                if i == flush_after:
                    # etcd refuses a compaction at or below its last one ("required revision has
                    # been compacted"); the replay through etcd goes on without it
                    at = self.revision if self.revision > compacted else 0
                    self._flush(src, at)
                    compacted = max(compacted, at)
        finally:
            stream.close()
            self.progress.close()
        self._keys.finish()
        if compacted > finished:
            raw = revision_key(compacted, 0)
            meta[FINISHED_COMPACT] = raw
            meta[SCHEDULED_COMPACT] = raw
        out.bucket(META_BUCKET, sorted(meta.items()), sequence=src.bucket_sequence(META_BUCKET))
        return self.revision

    def _stream(self, deltas: list[Snapshot], work: Path):
        if self._prefetched is not None:
            return iter(self._prefetched)
        return prepared_deltas(self.store, deltas, work, max_fetchers=self.max_fetchers, progress=self.progress,
                               prepare=_as_is)

    @staticmethod
    def _plain(src: BoltReader, name: bytes) -> Iterator[tuple[bytes, bytes]]:
        for key, value, flags in src.elements(name):
            if flags & BUCKET_LEAF:
                raise DirectUnsupported(f"nested bucket in etcd's {name.decode('utf-8', 'replace')} bucket")
            yield key, value

    def _load(self, src: BoltReader, *, copy: bool) -> int:
        """Build the key index from the db, and with ``copy`` write its leaves into the new key
        bucket as they are; returns the last revision in it."""
        assert self._keys is not None
        last = 0
        load = self.index.load_leaf
        add_leaf = self._keys.add_leaf
        for page, items in src.leaves(KEY_BUCKET):
            last = load(items) or last
            if copy:
                add_leaf(page, items)
        return last

    def _flush(self, src: BoltReader, compact_at: int) -> None:
        """At the last compaction point: write the db's own changes, then those held back, into
        the new key bucket, less what a compaction at ``compact_at`` (the current revision: the
        index tells; 0: none, etcd refused it) drops."""
        assert self._keys is not None and self._spill is not None
        add = self._keys.add
        keep = self.index.kept
        parse = proto.KeyValue.FromString
        for page, items in src.leaves(KEY_BUCKET):
            if not compact_at:
                self._keys.add_leaf(page, items)
                continue
            for raw, value, _flags in items:  # loaded (so checked) by _load already
                main, sub, _tombstone = parse_revision_key(raw)
                if keep(parse(value).key, main, sub):
                    add(raw, value)
        for main, sub, tombstone, key, value in self._spill.read():
            if compact_at and not keep(key, main, sub):
                continue
            add(revision_key(main, sub, tombstone), value)
        self._spill.close()
        self._spill = None

    # -- one revision ----------------------------------------------------------------------------
    def _apply(self, rev: int, events: list, where: str) -> None:
        from ..delta import EventType

        keys = self.index.keys
        spill = self._spill
        add = self._keys.add if self._keys is not None else None
        sub = 0
        puts: set[bytes] = set()
        deletes: set[bytes] = set()
        for ev in events:
            key = ev.kv.key
            if not key:
                raise RestoreError(f"replaying revision {rev} of delta snapshot {where} failed: etcdserver: key is "
                                   "not provided")
            known = keys.get(key)
            if ev.type == EventType.DELETE:
                if key in puts:
                    raise _duplicate(rev, where)
                deletes.add(key)
                if known is None or not known[0]:
                    continue  # nothing to delete: no change, as in etcd
                keys[key] = (0, 0, rev, sub)
                value = _tombstone_value(key)
                tombstone = True
            else:
                if key in puts or key in deletes:
                    raise _duplicate(rev, where)
                puts.add(key)
                create, version = (known[0], known[1] + 1) if known is not None and known[0] else (rev, 1)
                keys[key] = (create, version, rev, sub)
                value = encode_kv(key, ev.kv.value, create, rev, version)
                tombstone = False
            if spill is not None:
                spill.add(rev, sub, tombstone, key, value)
            else:
                assert add is not None
                add(revision_key(rev, sub, tombstone), value)
            sub += 1
        if not sub:
            raise RestoreError(f"mismatched event revision in delta snapshot {where}: revision {rev} only deletes keys "
                               f"that do not exist, so it changes nothing and the restored data stays at revision "
                               f"{rev - 1}")
        self.revision = rev


def _duplicate(rev: int, where: str) -> RestoreError:
    return RestoreError(f"replaying revision {rev} of delta snapshot {where} failed: etcdserver: duplicate key given "
                        "in txn request")
