"""Delta snapshots on their way to a replay: fetched ahead, verified and decoded ahead, and cut
into the revisions still to apply. Shared by both replay engines (:mod:`.replay` through a
temporary etcd, :mod:`.direct` into the db file), so both skip, refuse and report alike.

* Deltas are fetched a bounded window ahead (``--max-fetchers`` downloads at a time, never more
  than that many fetched and not yet applied) and decoded one ahead, in threads, while the
  current one is applied; a restore may start this before the full snapshot is restored
  (:class:`DeltaPrefetch`), with the same bound.
* A delta entirely at or below the revision already restored is skipped; events of a delta at
  or below it are skipped (the first delta may overlap the full snapshot); the remaining
  revisions must follow the restored one without a gap, or the replay stops with "mismatched
  event revision" naming the object.
* An upper bound (point-in-time restore: ``to_revision``) keeps only the deltas that hold
  revisions at or below it (:func:`deltas_up_to`) and, of the last one, only those revisions
  (:func:`up_to`): the restored revision is the bound.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Generator, Generic, Sequence, TypeVar

from ..errors import IntegrityError, RestoreError
from ..snapshot import Snapshot
from .fetch import fetch_to_file
from .progress import Progress

log = logging.getLogger(__name__)

T = TypeVar("T")


def group_by_revision(events) -> list[tuple[int, list]]:
    """Consecutive events of one source revision together, in order: [(revision, events)]."""
    groups: list[tuple[int, list]] = []
    for ev in events:
        rev = ev.kv.mod_revision
        if groups and groups[-1][0] == rev:
            groups[-1][1].append(ev)
        else:
            groups.append((rev, [ev]))
    return groups


def decode_groups(path: Path, where: str) -> list[tuple[int, list]]:
    """Read a fetched (decompressed) delta, check its SHA-256 trailer, decode its events and
    group them by revision; the file is removed once read."""
    from ..delta import decode_delta

    payload = path.read_bytes()
    path.unlink(missing_ok=True)
    try:
        events = decode_delta(payload)
    except IntegrityError as exc:
        raise RestoreError(f"delta snapshot {where} failed verification: {exc}") from exc
    del payload
    return group_by_revision(events)


class DeltaPrefetch(Generic[T]):
    """Deltas fetched a bounded window ahead and prepared (verify, decode, group, ``prepare``) one
    ahead in a thread of its own, yielded in order as ``(index, delta, prepare(groups), where)``.

    :meth:`start` begins the downloads and the first decode without waiting for them, so a
    restore can start it before ``etcdutl`` restores the full snapshot (a separate process: the
    decoding gets the other core meanwhile). Memory is the same bound either way: at most
    ``--max-fetchers`` fetched deltas as files in the work dir, one prepared delta being applied
    and the next one decoded. Iterate once; :meth:`close` (also after a failure, or when the
    deltas are never applied) cancels what has not started and waits for the threads, so none is
    left running. Logs "fetching" when started, and starts ``progress``'s delta count when the
    first delta is asked for."""

    def __init__(self, store, deltas: Sequence[Snapshot], work: Path, *, max_fetchers: int, progress: Progress,
                 prepare: Callable[[list[tuple[int, list]]], list[T]]) -> None:
        self.store = store
        self.deltas = list(deltas)
        self.work = work
        self.window = max(1, min(max_fetchers, len(self.deltas)))
        self.progress = progress
        self.prepare = prepare
        self._pool: ThreadPoolExecutor | None = None
        self._decoder: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}
        self._ready: Future | None = None
        self._iterated = False

    def _where(self, i: int) -> str:
        return f"{self.store.display} object {self.deltas[i].key}"

    def _fetch(self, i: int) -> Future:
        def run() -> Path:
            path = self.work / f"delta-{i:06d}"
            fetch_to_file(self.store, self.deltas[i], path)
            return path
        assert self._pool is not None
        return self._pool.submit(run)

    def _prepare_one(self, fetched: Future, where: str) -> list[T]:
        try:
            path = fetched.result()
        except IntegrityError as exc:
            raise RestoreError(f"delta snapshot {where}: {exc}") from exc
        return self.prepare(decode_groups(path, where))

    def start(self) -> DeltaPrefetch[T]:
        """Begin fetching and decoding (returns at once; idempotent)."""
        if self._pool is not None or not self.deltas:
            return self
        self.progress.info("fetching", deltas=len(self.deltas), parallel=self.window, store=self.store.display)
        self._pool = ThreadPoolExecutor(max_workers=self.window, thread_name_prefix="delta-fetch")
        # Decoding (JSON, base64) is most of a replay's own CPU: done for the next delta while the
        # current one is applied (or while etcdutl restores the full), it overlaps the wait for
        # etcd or the disk. One ahead bounds memory.
        self._decoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="delta-decode")
        try:
            for i in range(self.window):
                self._pending[i] = self._fetch(i)
            self._ready = self._decoder.submit(self._prepare_one, self._pending.pop(0), self._where(0))
        except BaseException:
            self.close()
            raise
        return self

    def __iter__(self) -> Generator[tuple[int, Snapshot, list[T], str], None, None]:
        assert not self._iterated, "a DeltaPrefetch is iterated once"
        self._iterated = True
        total = len(self.deltas)
        if not total:
            return
        self.start()
        self.progress.start_deltas(total)
        try:
            for i, delta in enumerate(self.deltas):
                assert self._ready is not None  # None only after the last delta
                prepared = self._ready.result()
                self._ready = None
                if i + self.window < total:
                    self._pending[i + self.window] = self._fetch(i + self.window)
                if i + 1 < total:
                    assert self._decoder is not None
                    self._ready = self._decoder.submit(self._prepare_one, self._pending.pop(i + 1),
                                                       self._where(i + 1))
                yield i, delta, prepared, self._where(i)
                del prepared
        finally:
            self.close()

    def close(self) -> None:
        """Cancel what has not started, wait for what has (no thread is left running); the
        fetched files stay in the work dir, which the caller removes."""
        for fut in self._pending.values():
            fut.cancel()
        self._pending.clear()
        if self._ready is not None:
            self._ready.cancel()
            self._ready = None
        if self._decoder is not None:
            self._decoder.shutdown(wait=True, cancel_futures=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def prepared_deltas(store, deltas: Sequence[Snapshot], work: Path, *, max_fetchers: int, progress: Progress,
                    prepare: Callable[[list[tuple[int, list]]], list[T]],
                    ) -> Generator[tuple[int, Snapshot, list[T], str], None, None]:
    """Yield ``(index, delta, prepare(groups), where)`` for each delta in order (a
    :class:`DeltaPrefetch` started when first asked for a delta). Close the generator (or
    exhaust it) to stop the threads."""
    return iter(DeltaPrefetch(store, deltas, work, max_fetchers=max_fetchers, progress=progress, prepare=prepare))


def _first(item: Any) -> int:
    return item[0]


def _event_count(item: Any) -> int:
    return len(item[1])


def still_to_apply(delta: Snapshot, prepared: Sequence[T], revision: int, *, first: bool, where: str,
                   revision_of: Callable[[T], int] = _first,
                   count_of: Callable[[T], int] = _event_count,
                   ) -> list[T] | None:
    """The prepared revisions of ``delta`` after ``revision``, checked to follow it without a
    gap; None when the delta is already contained in the restored data (nothing to check)."""
    if delta.last_revision <= revision:
        log.info("skipping delta already contained in the restored data", extra={
            "snapshot": delta.snap_name, "revision": revision})
        return None
    skipped = 0
    out: list[T] = []
    for item in prepared:
        rev = revision_of(item)
        if rev <= revision:
            skipped += count_of(item)
            continue
        expected = revision + len(out) + 1
        if rev != expected:
            raise RestoreError(f"mismatched event revision in delta snapshot {where}: next event is at "
                               f"revision {rev} but the restored data is at revision {expected - 1}")
        out.append(item)
    if skipped and not first:
        log.warning("delta overlaps revisions already restored; skipped those events",
                    extra={"snapshot": delta.snap_name, "events": skipped})
    return out


def deltas_up_to(deltas: Sequence[Snapshot], to_revision: int | None) -> list[Snapshot]:
    """The deltas a replay up to ``to_revision`` (None: no bound) needs: those starting at or
    below it (deltas are in revision order)."""
    if to_revision is None:
        return list(deltas)
    return [d for d in deltas if d.start_revision <= to_revision]


def up_to(groups: list[T], to_revision: int | None, revision_of: Callable[[T], int] = _first) -> list[T]:
    """The prepared revisions at or below ``to_revision`` (None: all of them)."""
    if to_revision is None:
        return groups
    return [item for item in groups if revision_of(item) <= to_revision]


def check_reached(delta: Snapshot, actual: int, where: str, holder: str = "etcd", *,
                  to_revision: int | None = None) -> None:
    """After a delta, the restored data (``holder``) must be at the revision its name ends with
    (or at ``to_revision`` when the delta goes beyond it)."""
    expected = delta.last_revision if to_revision is None else min(delta.last_revision, to_revision)
    if actual != expected:
        end = (f"the snapshot ends at revision {expected}" if expected == delta.last_revision
               else f"the replay stops at revision {expected}")
        raise RestoreError(f"mismatched event revision after delta snapshot {where}: {holder} is at revision "
                           f"{actual}, {end}")
