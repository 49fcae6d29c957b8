"""The delta collector: etcd's watch stream into an event buffer, cut into sealed deltas.

What it promises the snapshotter (and restore, through it):

* Events are buffered from ``next_rev`` on, each revision whole: responses are buffered one at a
  time and synchronously, and etcd never splits a revision across watch responses, so a delta
  sealed between two responses never splits a revision.
* :meth:`DeltaCollector.seal` moves the buffer into a :class:`SealedDelta` that starts right after
  the previous snapshot (or the previous sealed delta); new events go into a fresh buffer, so the
  watch keeps delivering while a sealed delta uploads. A sealed delta stays until the snapshotter
  has uploaded it.
* A watch that breaks (etcd restart, leader change) resumes at ``next_rev``, after a pause that
  grows while it keeps breaking (:data:`WATCH_RETRY`); a watch that cannot resume because etcd
  compacted that revision away calls ``on_compacted`` and ends: only a full snapshot helps then.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from .. import metrics
from ..delta import DeltaEncoder, GoTimeStamper, encode_watch_event
from ..etcd import client as etcdclient
from ..retry import UNLIMITED, Policy

log = logging.getLogger("etcdbr.snapshotter")

#: Pauses before the watch resumes after a break: 0.2s, doubling up to 5s; back to 0.2s once a
#: response arrives.
WATCH_RETRY = Policy(attempts=UNLIMITED, first_wait=0.2, multiplier=2.0, max_wait=5.0)


@dataclass
class SealedDelta:
    start: int
    last: int
    payload: bytes
    events: int


class DeltaCollector:
    """The event buffer of one snapshotter, and the watch task that fills it.

    ``clock()`` returns unix seconds (stamped on each event, as the Go tool does).
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._stamp = GoTimeStamper()
        self.encoder = DeltaEncoder()
        self.pending: list[SealedDelta] = []
        #: The next revision to buffer (None before the first snapshot is known).
        self.next_rev: int | None = None
        self._task: asyncio.Task | None = None

    # -- the buffer ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes in the buffer not yet sealed."""
        return self.encoder.size

    @property
    def pending_bytes(self) -> int:
        return sum(len(p.payload) for p in self.pending)

    @property
    def buffered_events(self) -> int:
        return self.encoder.count + sum(p.events for p in self.pending)

    @property
    def collected_revision(self) -> int | None:
        """The last revision snapshotted or buffered (the watch resumes after it)."""
        return None if self.next_rev is None else self.next_rev - 1

    def discard(self, next_rev: int | None = None) -> None:
        """Drop the buffer and the sealed deltas (a full snapshot holds them, or the store is
        read again); with ``next_rev``, collect from that revision on."""
        self.encoder = DeltaEncoder()
        self.pending = []
        if next_rev is not None:
            self.next_rev = next_rev

    def add(self, response) -> tuple[int, bool]:
        """Buffer one watch response: ``(events added, whether revisions were skipped)``.
        Synchronous on purpose: a delta is sealed between two responses, never inside one."""
        assert self.next_rev is not None
        floor = self.next_rev
        expected = floor - 1
        stamp = self._capture_time()
        added, skipped = 0, False
        add = self.encoder.add_encoded
        for ev in response.events:
            kv = ev.kv
            rev = kv.mod_revision
            if rev < floor:
                continue  # already buffered or snapshotted (a resumed watch never repeats, but be sure)
            if rev != expected and rev != expected + 1:
                # Every revision after 1 carries at least one event on a whole-keyspace watch.
                log.warning("watch skipped revisions; a full snapshot follows",
                            extra={"expected_revision": expected + 1, "got_revision": rev})
                skipped = True
            expected = rev
            # The protobuf event encoded as it is (type 1 = DELETE), no Event built per event.
            add(encode_watch_event(ev.type == 1, kv, stamp), rev)
            added += 1
        if added:
            self.next_rev = expected + 1
        return added, skipped

    def seal(self, prev_last_revision: int) -> None:
        """Move the buffered events into a sealed delta that starts after ``prev_last_revision``
        (the previous snapshot's) or after the last sealed delta; new events go into a fresh buffer."""
        encoder = self.encoder
        if not encoder.count:
            return
        self.encoder = DeltaEncoder()
        start = self.pending[-1].last + 1 if self.pending else prev_last_revision + 1
        if encoder.first_revision != start:
            # Only possible after a full snapshot whose revision was a lower bound (its first
            # delta repeats events) or after etcd history was rewritten; restore copes with the
            # first, a full snapshot is the answer to the second.
            log.info("delta does not begin at its start revision", extra={
                "start_revision": start, "first_event_revision": encoder.first_revision})
        assert encoder.last_revision is not None  # it holds events
        self.pending.append(SealedDelta(start, encoder.last_revision, encoder.finish(), encoder.count))

    def _capture_time(self) -> str:
        return self._stamp(int(self._clock() * 1e9))

    # -- the watch -----------------------------------------------------------------------------
    @property
    def watching(self) -> bool:
        return self._task is not None and not self._task.done()

    def forget_watch(self) -> None:
        """The event loop changed: the old loop's task is gone with it."""
        self._task = None

    def start_watch(self, get_client: Callable[[], Awaitable[Any]], reset_client: Callable[[], Awaitable[None]],
                    on_response: Callable[[Any], None], on_compacted: Callable[[], None]) -> bool:
        """Watch from ``next_rev`` in a task, handing each response to ``on_response``; False when
        a watch runs already or there is no revision to start from."""
        if self.watching or self.next_rev is None:
            return False
        self._task = asyncio.get_running_loop().create_task(
            self._watch(get_client, reset_client, on_response, on_compacted), name="snapshotter-watch")
        return True

    async def stop_watch(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
        except Exception:  # noqa: BLE001 - the loop logs its own failures
            pass

    async def _watch(self, get_client, reset_client, on_response, on_compacted) -> None:
        retries = 0
        while True:
            start = self.next_rev
            assert start is not None  # start_watch checked it; it is never unset
            try:
                client = await get_client()
                async for response in etcdclient.watch_responses(client, start):
                    retries = 0
                    on_response(response)
            except etcdclient.WatchCompacted as exc:
                log.warning("cannot watch from the last snapshotted revision (compacted); a full snapshot follows",
                            extra={"from_revision": exc.start_revision, "compacted_to": exc.compact_revision})
                on_compacted()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any break of the stream is resumed
                log.warning("watch interrupted; resuming", extra={"from_revision": self.next_rev, "error": str(exc),
                                                                  "retry_in_seconds": WATCH_RETRY.wait(retries)})
                metrics.snapshotter_failure.labels("watch").inc()
                if etcdclient.needs_reconnect(exc):
                    await reset_client()
            await asyncio.sleep(WATCH_RETRY.wait(retries))
            retries += 1
