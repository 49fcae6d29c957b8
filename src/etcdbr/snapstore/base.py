"""The snapstore protocol: what every store offers, and what callers may rely on whatever the provider.

* ``check(sweep)`` verifies the container is reachable with these credentials, or raises.
* ``list()`` returns every snapshot under the store's prefix, sorted (see ``snapshot.sort_key``).
  An unreachable store raises :class:`StoreUnavailable`; it never answers "empty" on error.
* ``save(snapshot, stream)`` reads the stream to its end and makes the object visible only once
  complete: a failed save leaves nothing listed (multipart aborted, staged blocks uncommitted,
  temp files removed). Memory is bounded by ``min_chunk_size * max_parallel_chunk_uploads``.
* ``fetch(snapshot)`` returns a readable binary stream; the caller closes it. A missing object
  raises :class:`ObjectNotFound`.
* ``delete(snapshot)`` removes the object; :class:`ImmutableObject` when retention forbids it,
  :class:`ObjectNotFound` when already gone.
* ``copy_from(other, src, dst)`` performs a server-side copy when ``other`` lives on the same
  service, and returns False when it cannot (the caller then streams the bytes).

Every store is safe to share between threads (the copier and the snapshotter share one). The
implementations: :class:`~.local.LocalStore` (a directory); :class:`~.objectstore.ObjectStore`,
the base of S3, GCS and ABS (multipart uploads, per-part retries); and
:class:`~.rotating.RotatingStore`, which wraps a store whose credentials are files and rebuilds it
when they are rotated. :func:`~.opening.open_store` picks and builds the right one.
"""

from __future__ import annotations

import abc
import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator

from ..snapshot import Snapshot, parse_listing

if TYPE_CHECKING:  # config imports the provider names from this package
    from ..config import StoreConfig
    from .credentials import Credentials


@dataclass
class ObjectAttrs:
    """What a listing knows about one object besides its key."""

    size: int | None = None
    immutable_until: Any = None
    version_id: str = ""

    def as_dict(self) -> dict:
        return {"size": self.size, "immutable_until": self.immutable_until, "version_id": self.version_id or None}


@dataclass
class Leftover:
    """What an upload interrupted mid-way (a killed process) left in a store's staging area."""

    key: str
    age: float                 # seconds since it was last written
    size: int | None = None
    abandoned: bool = False    # old enough (and unlocked) that the next start's sweep removes it


class SnapStore(abc.ABC):
    """The protocol every store implements (see the module's docstring for the contract)."""

    provider: str = ""
    #: Credentials read from files for this store, or None. A store that has some is served
    #: through a :class:`~.rotating.RotatingStore`, which watches their files.
    credentials: "Credentials | None" = None

    def __init__(self, config: "StoreConfig") -> None:
        self.config = config
        self.prefix = config.prefix_v2

    # -- naming ------------------------------------------------------------------------------
    @property
    def display(self) -> str:
        """``S3/bucket``: the endpoint as operators see it in logs."""
        return f"{self.provider}/{self.config.container}"

    @property
    def service_identity(self) -> tuple:
        """Two stores with equal identities can copy server-side."""
        return (self.provider, self.config.endpoint_override)

    def object_key(self, snapshot: Snapshot) -> str:
        return snapshot.key

    def list_root(self) -> str:
        """List the parent of ``<prefix>/v2`` so that both the v1 and v2 trees are seen."""
        parent = self.prefix.rsplit("/", 1)[0] if "/" in self.prefix else ""
        return parent + "/" if parent else ""

    # -- the protocol ------------------------------------------------------------------------
    @abc.abstractmethod
    def check(self, sweep: bool = True) -> None:
        """Verify the container is reachable with these credentials; raise a StoreError if not.

        With ``sweep`` (commands that write: server, snapshot, copy, restore), also remove what
        uploads killed mid-way left behind, once it is old enough that no live upload can own it
        (each provider's rule is in its module). Read-only commands (verify, snapshot list) pass
        False and leave the store as they found it.
        """

    @abc.abstractmethod
    def objects(self, include_all: bool = True) -> Iterator[tuple[str, ObjectAttrs]]:
        """Every object under :meth:`list_root` with what the listing knows about it, whether its
        key names a snapshot or not (``verify`` reports those :meth:`list` leaves out).
        ``include_all=False`` leaves out what the Go tool hides (objects tagged for exclusion)."""

    def list(self, include_all: bool = False) -> list[Snapshot]:
        """The snapshots of this store, sorted; objects whose keys name no snapshot are skipped."""
        entries = ((key, attrs.as_dict()) for key, attrs in self.objects(include_all))
        return parse_listing(entries, endpoint=self.display)

    @abc.abstractmethod
    def save(self, snapshot: Snapshot, stream: BinaryIO) -> int:
        """Store ``stream`` as ``snapshot``, visible only once whole; returns the bytes stored."""

    @abc.abstractmethod
    def fetch(self, snapshot: Snapshot) -> BinaryIO:
        """A readable stream of the stored object; the caller closes it."""

    @abc.abstractmethod
    def delete(self, snapshot: Snapshot) -> None:
        """Remove the object (ImmutableObject under retention, ObjectNotFound when gone)."""

    def copy_from(self, other: "SnapStore", src: Snapshot, dst: Snapshot) -> bool:
        """Copy ``src`` of ``other`` to ``dst`` inside the service; False when this cannot be done."""
        return False

    def content_fingerprint(self, snapshot: Snapshot) -> tuple[int, str] | None:
        """(size, digest) as the service reports them for the stored object, where the digest
        is derived from the content and a server-side copy of the object reports the same one;
        None when this provider (or this object's encryption) offers no such digest."""
        return None

    def staging_leftovers(self) -> builtins.list[Leftover]:
        """Pieces of interrupted uploads in this store's staging area (``verify`` reports them)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional: a store without clients or pools has nothing to release
        """Release clients and pools. Never raises: closing is best effort (see ``ObjectStore._close_client``),
        so callers need no guard of their own."""

    @property
    def credentials_generation(self) -> int:
        """How many rotations of the credential files this store has taken up (see
        :class:`~.rotating.RotatingStore`); 0 for a store that has none."""
        return 0

    def resolve(self) -> "SnapStore":
        """The store that serves calls now: this one, or the current store of a wrapper."""
        return self
