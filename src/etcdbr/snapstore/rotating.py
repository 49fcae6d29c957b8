"""Credentials rotated on disk, taken up without a restart.

Kubernetes rotates a secret by swapping the files of its volume; the Go tool polls their mtimes
and rebuilds its client, so must we, or every call fails once the old key is revoked. A
:class:`RotatingStore` holds the current store of one endpoint. Before each call it compares the
credential files' fingerprint with the one the current store was built from; when they differ it
builds a new store from the same config (the provider's constructor reads the new files, registers
the new secrets for masking and validates them) and swaps one reference, so every holder of the
wrapper sees the new credentials from its next call on. Files that cannot be used (half written,
malformed) keep the previous store, with one warning per change. Stores it replaced stay open for
calls still running on them and are closed later (the oldest once more than :data:`RETIRED_KEPT`
wait, all of them by :meth:`RotatingStore.close`).
"""

from __future__ import annotations

import builtins
import logging
import threading
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from ..errors import EtcdbrError
from ..snapshot import Snapshot
from .base import Leftover, ObjectAttrs, SnapStore

if TYPE_CHECKING:
    from ..config import StoreConfig

log = logging.getLogger(__name__)

#: Replaced stores kept open after a rotation, for calls still running on them.
RETIRED_KEPT = 2


def _fingerprint(store: SnapStore) -> tuple | None:
    creds = store.credentials
    return creds.fingerprint() if creds is not None else None


class RotatingStore(SnapStore):
    """One endpoint's store, rebuilt by ``build(config)`` whenever its credential files change.

    The protocol's calls go to the current store. Provider attributes that are not part of the
    protocol (a client, a bucket name) are read from the current store, for diagnostics and tests.
    """

    def __init__(self, store: SnapStore, build: Callable[["StoreConfig"], SnapStore]) -> None:
        super().__init__(store.config)
        self._build = build
        self._current = store
        self._fingerprint = _fingerprint(store)
        self._refused: tuple | None = None      # a fingerprint whose files could not be used
        self._retired: list[SnapStore] = []
        self._generation = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> SnapStore:
        """The store that serves calls now, without looking at the files."""
        return self._current

    def resolve(self) -> SnapStore:
        """The current store, rebuilt first when the credential files changed since it was built."""
        store = self._current
        now = _fingerprint(store)
        if now == self._fingerprint or now == self._refused:
            return store
        with self._lock:
            if self._current is not store:
                return self._current  # another thread rebuilt it meanwhile
            try:
                fresh = self._build(self.config)
            except EtcdbrError as exc:
                self._refused = now
                log.warning("credentials changed but cannot be used; keeping the previous ones",
                            extra={"store": store.display, "error": str(exc)})
                return store
            self._retired.append(store)
            while len(self._retired) > RETIRED_KEPT:
                self._retired.pop(0).close()
            self._fingerprint = _fingerprint(fresh)
            self._current = fresh
            self._generation += 1
        log.info("credentials changed; store clients rebuilt", extra={"store": fresh.display})
        return fresh

    @property
    def credentials_generation(self) -> int:
        """How many rotations of the credential files this store has taken up; the files are
        checked (and a rotation taken up) first. The snapshotter takes a new full snapshot when
        it changes, as the Go tool does: new credentials may well mean a new account."""
        self.resolve()
        return self._generation

    # -- the protocol, served by the current store -------------------------------------------
    @property
    def provider(self) -> str:  # type: ignore[override]  # read-only: the current store's
        return self._current.provider

    @property
    def credentials(self):  # type: ignore[override]  # read-only: the current store's
        return self._current.credentials

    @property
    def display(self) -> str:
        return self._current.display

    @property
    def service_identity(self) -> tuple:
        return self._current.service_identity

    def object_key(self, snapshot: Snapshot) -> str:
        return self._current.object_key(snapshot)

    def list_root(self) -> str:
        return self._current.list_root()

    def check(self, sweep: bool = True) -> None:
        self.resolve().check(sweep)

    def objects(self, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        return self.resolve().objects(include_all)

    def list(self, include_all: bool = False) -> list[Snapshot]:
        return self.resolve().list(include_all)

    def save(self, snapshot: Snapshot, stream: BinaryIO) -> int:
        return self.resolve().save(snapshot, stream)

    def fetch(self, snapshot: Snapshot) -> BinaryIO:
        return self.resolve().fetch(snapshot)

    def delete(self, snapshot: Snapshot) -> None:
        self.resolve().delete(snapshot)

    def copy_from(self, other: SnapStore, src: Snapshot, dst: Snapshot) -> bool:
        return self.resolve().copy_from(other, src, dst)

    def content_fingerprint(self, snapshot: Snapshot) -> tuple[int, str] | None:
        return self.resolve().content_fingerprint(snapshot)

    def staging_leftovers(self) -> builtins.list[Leftover]:
        return self.resolve().staging_leftovers()

    def close(self) -> None:
        with self._lock:
            stores, self._retired = [self._current, *self._retired], []
        for store in stores:
            store.close()

    def __getattr__(self, name: str):
        # Only called for names this class lacks: the provider's own attributes.
        if name.startswith("__") or name in ("_current", "_build"):
            raise AttributeError(name)
        return getattr(self._current, name)

