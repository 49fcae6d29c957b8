"""Writing a fresh bbolt database file, bucket by bucket, from keys given in ascending order.

The direct delta replay (:mod:`.direct`) rebuilds an etcd backend with it: every bucket of the
restored db copied, the ``key`` bucket with the replayed revisions appended. The file is what
bbolt's own ``compact`` would produce from the same content: two meta pages, an empty freelist,
then every bucket's B+tree written bottom-up with full pages, nothing free and nothing
unreachable, so ``tx.Check`` has nothing to report and etcd opens it as any other db.

Format (bbolt 1.3, the same one :mod:`.bbolt` reads): pages of ``page_size`` bytes with a header
``id u64, flags u16, count u16, overflow u32``; a node larger than a page takes the following
pages too (``overflow`` of them); leaf elements ``flags u32, pos u32, ksize u32, vsize u32`` and
branch elements ``pos u32, ksize u32, pgid u64``, ``pos`` counted from the element to its key,
keys and values packed after the elements in element order; a branch element's key is the first
key of its child. A bucket is a leaf element of its parent with flag ``0x01`` whose value is
``root u64, sequence u64``. The meta page holds ``magic, version, page_size, flags u32; root
bucket (root u64, sequence u64); freelist, high-water pgid, txid, checksum u64`` (FNV-64a of the
fields before the checksum); meta page ``txid % 2`` is the one bbolt wrote last.

The writer only appends, except for the three first pages written at :meth:`BoltWriter.finish`;
the caller writes to a temporary name and renames it once :meth:`finish` has synced it.
"""

from __future__ import annotations

import os
import struct
from typing import Iterable

from .bbolt import BRANCH, BUCKET_LEAF, ELEMENT, LEAF, MAGIC, META, PAGE_HEADER, VERSION, fnv64a

FREELIST = 0x10
_HEADER = struct.Struct("<QHHI")
_LEAF_ELEMENT = struct.Struct("<IIII")
_BRANCH_ELEMENT = struct.Struct("<IIQ")
_META = struct.Struct("<IIIIQQQQQ")
# Pages written in one go: sequential appends of about this many bytes.
_WRITE_BATCH = 4 * 1024 * 1024
# One branch node holds at most this many children (bbolt panics at 0xFFFF elements per page).
_MAX_ELEMENTS = 0xFFFE


class BoltWriter:
    """A new bbolt file at ``path`` (created 0600, truncated). Buckets are added with
    :meth:`bucket` in ascending name order; :meth:`finish` writes the root bucket, the freelist
    and the meta pages and fsyncs the file."""

    def __init__(self, path, page_size: int, *, txid: int = 2) -> None:
        if page_size < 1024 or page_size & (page_size - 1):
            raise ValueError(f"implausible page size {page_size}")
        self.page_size = page_size
        self.txid = max(2, txid)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._next = 3  # pages 0 and 1: meta; 2: the freelist
        self._pending: list[bytes | bytearray] = []
        self._pending_bytes = 0
        self._buckets: list[tuple[bytes, int, int]] = []
        self._closed = False

    # -- pages -------------------------------------------------------------------------------
    def _append(self, flags: int, count: int, body: bytes | bytearray) -> int:
        """Write one node (header + ``body``) at the end of the file; returns its page id."""
        size = PAGE_HEADER + len(body)
        pages = -(-size // self.page_size)
        pgid = self._next
        self._next += pages
        self._pending.append(_HEADER.pack(pgid, flags, count, pages - 1))
        self._pending.append(body)
        pad = pages * self.page_size - size
        if pad:
            self._pending.append(bytes(pad))
        self._pending_bytes += pages * self.page_size
        if self._pending_bytes >= _WRITE_BATCH:
            self._flush()
        return pgid

    def _flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        offset = (self._next * self.page_size) - len(data)
        written = 0
        while written < len(data):
            written += os.pwrite(self._fd, memoryview(data)[written:], offset + written)
        self._pending.clear()
        self._pending_bytes = 0

    # -- buckets -----------------------------------------------------------------------------
    def open_bucket(self, name: bytes, *, sequence: int = 0) -> "TreeWriter":
        """A top-level bucket whose items are added one by one (keys strictly ascending, no
        sub-buckets); it is part of the file once its :meth:`TreeWriter.finish` is called.
        Buckets may be written in any order, even interleaved."""
        if any(name == known for known, _, _ in self._buckets):
            raise ValueError(f"bucket {name!r} written twice")
        return TreeWriter(self, name=name, sequence=sequence)

    def bucket(self, name: bytes, items: Iterable[tuple[bytes, bytes]], *, sequence: int = 0) -> int:
        """Write a whole top-level bucket from ``items``; returns how many items it holds."""
        tree = self.open_bucket(name, sequence=sequence)
        for key, value in items:
            tree.add(key, value)
        tree.finish()
        return tree.count

    def finish(self) -> None:
        """Write the root bucket, the freelist and both meta pages, then fsync and close."""
        root = TreeWriter(self)
        for name, pgid, sequence in sorted(self._buckets):
            root.add(name, struct.pack("<QQ", pgid, sequence), BUCKET_LEAF)
        root_pgid = root.finish()
        self._flush()
        ps = self.page_size
        head = bytearray(3 * ps)
        base = self.txid + self.txid % 2
        for i in (0, 1):
            txid = base + i  # bbolt writes meta page txid % 2: both valid, page 1 the newer
            fields = _META.pack(MAGIC, VERSION, ps, 0, root_pgid, 0, 2, self._next, txid)
            _HEADER.pack_into(head, i * ps, i, META, 0, 0)
            head[i * ps + PAGE_HEADER:i * ps + PAGE_HEADER + len(fields)] = fields
            struct.pack_into("<Q", head, i * ps + PAGE_HEADER + len(fields), fnv64a(fields))
        _HEADER.pack_into(head, 2 * ps, 2, FREELIST, 0, 0)
        os.pwrite(self._fd, bytes(head), 0)
        os.fsync(self._fd)
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    @property
    def pages(self) -> int:
        return self._next


class TreeWriter:
    """One bucket's B+tree, built bottom-up: leaves written as they fill, branch levels at the end."""

    def __init__(self, out: BoltWriter, *, name: bytes | None = None, sequence: int = 0) -> None:
        self.out = out
        self.name = name
        self.sequence = sequence
        self.count = 0
        self._elements: list[tuple[int, bytes, bytes]] = []
        self._size = PAGE_HEADER
        self._first: bytes | None = None
        self._last: bytes | None = None
        self._children: list[tuple[bytes, int]] = []  # (first key, pgid) of every leaf written

    def add(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if not key:
            raise ValueError("bbolt keys cannot be empty")
        if self._last is not None and key <= self._last:
            raise ValueError("keys must be added in strictly ascending order")
        self._last = key
        grow = ELEMENT + len(key) + len(value)
        if self._elements and self._size + grow > self.out.page_size:
            self._write_leaf()
        if self._first is None:
            self._first = key
        n = len(self._elements)
        self._elements.append((flags, key, value))
        self._size += grow
        self.count += 1
        if n + 1 >= _MAX_ELEMENTS:
            self._write_leaf()

    def add_leaf(self, page: bytes, items: list[tuple[bytes, bytes, int]]) -> None:
        """Copy a leaf page read from another bbolt file as it is (only its page id changes):
        ``page`` with its overflow pages, ``items`` its elements (keys after any added so far)."""
        if not items:
            return
        first, last = items[0][0], items[-1][0]
        if self._last is not None and first <= self._last:
            raise ValueError("keys must be added in strictly ascending order")
        if self._elements:
            self._write_leaf()
        self._last = last
        self.count += len(items)
        self._children.append((first, self.out._append(LEAF, len(items), page[PAGE_HEADER:])))

    def _write_leaf(self) -> None:
        items = self._elements
        n = len(items)
        body = bytearray(n * ELEMENT)
        data = []
        # pos counts from the element to its key: past the remaining elements, then the data so far
        offset = n * ELEMENT
        for i, (flags, key, value) in enumerate(items):
            _LEAF_ELEMENT.pack_into(body, i * ELEMENT, flags, offset - i * ELEMENT, len(key), len(value))
            data.append(key)
            data.append(value)
            offset += len(key) + len(value)
        body += b"".join(data)
        assert self._first is not None
        self._children.append((self._first, self.out._append(LEAF, n, body)))
        self._elements = []
        self._size = PAGE_HEADER
        self._first = None

    def finish(self) -> int:
        """Write what is left and the branch levels; returns the root page id."""
        if self._elements:
            self._write_leaf()
        if not self._children:  # an empty bucket: one empty leaf
            self._children.append((b"", self.out._append(LEAF, 0, b"")))
        level = self._children
        while len(level) > 1:
            level = self._branch_level(level)
        root = level[0][1]
        if self.name is not None:
            self.out._buckets.append((self.name, root, self.sequence))
        return root

    def _branch_level(self, children: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        parents: list[tuple[bytes, int]] = []
        start, size = 0, PAGE_HEADER
        for i, (key, _pgid) in enumerate(children):
            grow = ELEMENT + len(key)
            if i > start and (size + grow > self.out.page_size or i - start >= _MAX_ELEMENTS):
                parents.append(self._write_branch(children[start:i]))
                start, size = i, PAGE_HEADER
            size += grow
        parents.append(self._write_branch(children[start:]))
        return parents

    def _write_branch(self, children: list[tuple[bytes, int]]) -> tuple[bytes, int]:
        n = len(children)
        body = bytearray(n * ELEMENT)
        offset = n * ELEMENT
        for i, (key, pgid) in enumerate(children):
            _BRANCH_ELEMENT.pack_into(body, i * ELEMENT, offset - i * ELEMENT, len(key), pgid)
            offset += len(key)
        body += b"".join(key for key, _ in children)
        return children[0][0], self.out._append(BRANCH, n, body)
