"""``compact``: fold the latest chain (full + deltas) into one new full snapshot.

The chain is restored into a private temporary data dir with a temporary member, which is then
compacted at its head revision, optionally defragmented, and asked for a snapshot over the
Maintenance RPC. The snapshot's SHA-256 trailer is checked before anything is uploaded, and the
upload is a new object ``Full-00000000-<head>-<now>``: nothing in the store is modified or
deleted (GC retires the old chain later), so a failed compaction costs nothing but time.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from ..config import Config
from ..errors import EtcdbrError, IntegrityError, RestoreError
from ..snapshot import Kind, Snapshot, new_snapshot
from .progress import Progress
from .restorer import Chain, Restorer, _cleanup_work_dir, _work_dir

log = logging.getLogger(__name__)


@dataclass
class CompactResult:
    snapshot: Snapshot | None
    revision: int | None
    source: Chain | None
    db_bytes: int = 0
    stored_bytes: int = 0


class Compactor:
    def __init__(self, store, config: Config, *, defragment: bool = True,
                 snapshot_timeout: timedelta = timedelta(minutes=30), defrag_timeout: timedelta = timedelta(minutes=8),
                 progress: Progress | None = None) -> None:
        self.store = store
        self.config = config
        self.defragment = defragment
        self.snapshot_timeout = snapshot_timeout.total_seconds()
        self.defrag_timeout = defrag_timeout.total_seconds()
        self.progress = progress or Progress()
        self.restorer = Restorer(store, config.restoration, progress=self.progress)

    def run(self, chain: Chain | None = None) -> CompactResult:
        chain = chain or self.restorer.latest()
        if chain is None:
            log.info("No base snapshot found. Will do nothing.", extra={"store": self.store.display})
            return CompactResult(None, None, None)
        self.restorer.check_chain(chain)
        work, root_created = _work_dir(self.config.restoration.temp_snapshots_dir)
        member = None
        try:
            revision, member = self.restorer.build(work / "compaction.etcd", chain, work, keep_running=True)
            assert member is not None and member.client is not None
            client = member.client
            self.progress.info("compacting", revision=revision)
            try:
                client.compact(revision, physical=True)
            except EtcdbrError as exc:
                if "compacted" not in str(exc):
                    raise
                log.warning("revision already compacted", extra={"revision": revision})
            if self.defragment:
                self.progress.info("defragmenting")
                client.defragment(timeout=self.defrag_timeout)
            db_path = work / "compacted.db"
            db_bytes = self._take_snapshot(client, db_path)
            member.stop()
            member = None
            if self.restorer.auth_switched_off:
                switch_auth_on_in_snapshot(db_path)
            snapshot, stored = self._upload(db_path, revision)
        finally:
            if member is not None:
                member.stop()
            self.progress.close()
            _cleanup_work_dir(work, root_created)
        log.info("compacted snapshot uploaded", extra={
            "snapshot": snapshot.snap_name, "store": self.store.display, "revision": revision,
            "replaced_deltas": len(chain.deltas), "db_bytes": db_bytes, "stored_bytes": stored})
        return CompactResult(snapshot, revision, chain, db_bytes, stored)

    def _take_snapshot(self, client, path: Path) -> int:
        self.progress.info("taking a full snapshot of the compacted data")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            size, digest, trailer = client.snapshot(out, timeout=self.snapshot_timeout)
            out.flush()
            os.fsync(out.fileno())
        if size % 512 != 32:
            raise RestoreError(f"snapshot of the compacted data is {size} bytes: SHA256 hash seems to be missing")
        if digest != trailer:
            raise RestoreError(f"snapshot of the compacted data failed verification: expected sha256 "
                               f"{trailer.hex()}, got {digest.hex()}")
        return size

    def _upload(self, db_path: Path, revision: int) -> tuple[Snapshot, int]:
        from ..compression import compressing_reader, suffix_for

        policy = self.config.snapshotter.compression
        snapshot = new_snapshot(Kind.FULL, 0, revision, prefix=self.store.prefix, compression_suffix=suffix_for(policy))
        self.progress.info("uploading", snapshot=snapshot.snap_name, store=self.store.display)
        with open(db_path, "rb") as raw:
            stream = compressing_reader(raw, policy) if policy else raw
            try:
                stored = self.store.save(snapshot, stream)
            finally:
                if stream is not raw:
                    stream.close()
        return snapshot, stored


def switch_auth_on_in_snapshot(path: Path) -> None:
    """The temporary member replayed with etcd authentication switched off (see
    ``Restorer._switch_auth_off``); the snapshot it gave must carry it on again, as the chain it
    replaces did. The flag is flipped in the snapshot's db and its SHA-256 trailer recomputed."""
    from .bbolt import set_auth_enabled

    set_auth_enabled(path, True)
    with open(path, "r+b") as fh:
        digest = _hash_before_trailer(fh, path.stat().st_size)
        fh.write(digest)
        fh.flush()
        os.fsync(fh.fileno())
    log.info("switched etcd authentication back on in the compacted snapshot", extra={"path": str(path)})


def verify_db_trailer(path: Path) -> None:
    """Check etcd's SHA-256 trailer of a snapshot file (used by tests and tools)."""
    size = path.stat().st_size
    if size % 512 != 32:
        raise IntegrityError("SHA256 hash seems to be missing")
    with open(path, "rb") as fh:
        digest = _hash_before_trailer(fh, size)
        trailer = fh.read(32)
    if digest != trailer:
        raise IntegrityError(f"expected sha256 {trailer.hex()}, got {digest.hex()}")


def _hash_before_trailer(fh, size: int) -> bytes:
    """SHA-256 of a snapshot file's db (all but its last 32 bytes), read from the start; leaves
    ``fh`` at the trailer."""
    fh.seek(0)
    h = hashlib.sha256()
    remaining = size - 32
    while remaining:
        chunk = fh.read(min(remaining, 1 << 20))
        h.update(chunk)
        remaining -= len(chunk)
    return h.digest()



