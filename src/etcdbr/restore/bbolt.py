"""A read-only reader of the few parts of etcd's bbolt database that validation needs.

It checks the two meta pages (magic, version, FNV-64a checksum) the way bbolt does when it opens
a file, then walks B+tree pages to read small buckets (``members``, ``meta``) and the last key of
``key`` (the current revision) without reading the rest of the file, so a sanity check costs a
few page reads whatever the database's size. Anything that does not look like bbolt's format
raises :class:`CorruptDB`. The file is opened read-only and never locked or written.

Format (bbolt 1.3): pages of ``page_size`` bytes; page header ``id u64, flags u16, count u16,
overflow u32``; meta at page 0 and 1; branch elements ``pos u32, ksize u32, pgid u64``; leaf
elements ``flags u32, pos u32, ksize u32, vsize u32`` (``pos`` relative to the element); a bucket
value is ``root u64, sequence u64`` followed, for an inline bucket (root 0), by its page.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import BinaryIO, Iterator

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
PAGE_HEADER = 16
ELEMENT = 16
_FNV_OFFSET, _FNV_PRIME = 0xCBF29CE484222325, 0x100000001B3
_MAX_DEPTH = 64
_PAGE_SIZES = (4096, 8192, 16384, 32768, 65536, 2048, 1024)
_HEADER = struct.Struct("<QHHI")
_LEAF_ELEMENTS = struct.Struct("<IIII")


class CorruptDB(Exception):
    """The file is not a readable bbolt database."""


def fnv64a(data: bytes) -> int:
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


@dataclass(frozen=True)
class Meta:
    page_size: int
    root: int
    freelist: int
    high_water: int
    txid: int


def _parse_meta(buf: bytes) -> Meta | None:
    if len(buf) < PAGE_HEADER + 64:
        return None
    body = buf[PAGE_HEADER:PAGE_HEADER + 64]
    magic, version, page_size, _flags, root, _seq, freelist, pgid, txid, checksum = struct.unpack("<IIIIQQQQQQ", body)
    if magic != MAGIC or version != VERSION or checksum != fnv64a(body[:56]):
        return None
    return Meta(page_size=page_size, root=root, freelist=freelist, high_water=pgid, txid=txid)


class BoltReader:
    def __init__(self, fh: BinaryIO, size: int, *, mapped: "mmap.mmap | None" = None) -> None:
        self.fh = fh
        self.size = size
        self._map = mapped
        self.meta = self._read_meta()

    @classmethod
    def open(cls, path, *, mapped: bool = False) -> "BoltReader":
        """Open ``path`` read-only; ``mapped``: read pages through a read-only memory map (for
        walking a whole database: no system call per page)."""
        import os

        fh = open(path, "rb")
        try:
            size = os.fstat(fh.fileno()).st_size
            view = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if mapped and size else None
            try:
                return cls(fh, size, mapped=view)
            except BaseException:
                if view is not None:
                    view.close()
                raise
        except BaseException:
            fh.close()
            raise

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        self.fh.close()

    def __enter__(self) -> "BoltReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self, offset: int, length: int) -> bytes:
        if self._map is not None:
            data = self._map[offset:offset + length]
        else:
            self.fh.seek(offset)
            data = self.fh.read(length)
        if len(data) != length:
            raise CorruptDB(f"truncated: wanted {length} bytes at offset {offset}, file has {self.size}")
        return data

    def _read_meta(self) -> Meta:
        if self.size < 2 * 1024:
            raise CorruptDB(f"too small for a bbolt database ({self.size} bytes)")
        first = self._read(0, min(self.size, 4096))
        metas = []
        m0 = _parse_meta(first)
        sizes = [m0.page_size] if m0 else list(_PAGE_SIZES)
        if m0:
            metas.append(m0)
        for ps in sizes:
            if self.size >= 2 * ps:
                m1 = _parse_meta(self._read(ps, PAGE_HEADER + 64))
                if m1:
                    metas.append(m1)
                    break
        if not metas:
            raise CorruptDB("both meta pages are invalid (bad magic, version or checksum)")
        meta = max(metas, key=lambda m: m.txid)
        if meta.page_size < 512 or meta.page_size & (meta.page_size - 1):
            raise CorruptDB(f"implausible page size {meta.page_size}")
        if meta.high_water * meta.page_size > self.size:
            raise CorruptDB(f"meta says {meta.high_water} pages of {meta.page_size} bytes but the file has "
                            f"{self.size} bytes")
        return meta

    # -- pages -------------------------------------------------------------------------------
    def _page(self, pgid: int) -> bytes:
        ps = self.meta.page_size
        if pgid < 2 or pgid >= self.meta.high_water:
            raise CorruptDB(f"page id {pgid} out of range")
        head = self._read(pgid * ps, ps)
        pid, flags, _count, overflow = struct.unpack_from("<QHHI", head)
        if pid != pgid:
            raise CorruptDB(f"page {pgid} claims to be page {pid}")
        if not flags & (BRANCH | LEAF):
            raise CorruptDB(f"page {pgid} has type {flags:#x}, expected a branch or leaf page")
        if overflow:
            if pgid + overflow >= self.meta.high_water:
                raise CorruptDB(f"page {pgid} overflows past the end of the database")
            head += self._read((pgid + 1) * ps, overflow * ps)
        return head

    @staticmethod
    def _elements(page: bytes) -> tuple[int, int]:
        _pid, flags, count, _overflow = struct.unpack_from("<QHHI", page)
        if PAGE_HEADER + count * ELEMENT > len(page):
            raise CorruptDB("page element count exceeds the page")
        return flags, count

    @staticmethod
    def _slice(page: bytes, start: int, length: int) -> bytes:
        if start < 0 or start + length > len(page):
            raise CorruptDB("element points outside its page")
        return page[start:start + length]

    def _leaf_items(self, page: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        _flags, count = self._elements(page)
        for i in range(count):
            at = PAGE_HEADER + i * ELEMENT
            eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, at)
            key = self._slice(page, at + pos, ksize)
            value = self._slice(page, at + pos + ksize, vsize)
            yield key, value, eflags

    @staticmethod
    def _leaf_list(page: bytes) -> list[tuple[bytes, bytes, int]]:
        """A leaf page's elements at once (the walk of a whole bucket spends its time here)."""
        _pid, _flags, count, _overflow = _HEADER.unpack_from(page)
        end = PAGE_HEADER + count * ELEMENT
        size = len(page)
        if end > size:
            raise CorruptDB("page element count exceeds the page")
        out = []
        at = PAGE_HEADER
        for eflags, pos, ksize, vsize in _LEAF_ELEMENTS.iter_unpack(page[PAGE_HEADER:end]):
            start = at + pos
            middle = start + ksize
            stop = middle + vsize
            if stop > size:
                raise CorruptDB("element points outside its page")
            out.append((page[start:middle], page[middle:stop], eflags))
            at += ELEMENT
        return out

    def leaves(self, bucket: bytes) -> Iterator[tuple[bytes, list[tuple[bytes, bytes, int]]]]:
        """Each leaf page of a top-level bucket in key order, as (the page with its overflow,
        its elements as (key, value, flags))."""
        root = self._find_bucket(bucket)
        if root is None:
            return
        # pages are read when their turn comes: a branch's children may be large (overflow)
        stack: list[tuple[bytes | int, int]] = [(root, 0)]
        while stack:
            at, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise CorruptDB("B+tree deeper than possible (cycle?)")
            page = self._page(at) if isinstance(at, int) else at
            flags, _count = self._elements(page)
            if flags & LEAF:
                yield page, self._leaf_list(page)
            elif flags & BRANCH:
                stack.extend((pgid, depth + 1) for _key, pgid in reversed(self._branch_children(page)))
            else:
                raise CorruptDB(f"unexpected page type {flags:#x} inside a bucket")

    def _branch_children(self, page: bytes) -> list[tuple[bytes, int]]:
        _flags, count = self._elements(page)
        out = []
        for i in range(count):
            at = PAGE_HEADER + i * ELEMENT
            pos, ksize, pgid = struct.unpack_from("<IIQ", page, at)
            out.append((self._slice(page, at + pos, ksize), pgid))
        return out

    def _walk(self, page: bytes, depth: int = 0, *, reverse: bool = False) -> Iterator[tuple[bytes, bytes, int]]:
        if depth > _MAX_DEPTH:
            raise CorruptDB("B+tree deeper than possible (cycle?)")
        flags, _count = self._elements(page)
        if flags & LEAF:
            items = list(self._leaf_items(page))
            yield from (reversed(items) if reverse else items)
            return
        if not flags & BRANCH:
            raise CorruptDB(f"unexpected page type {flags:#x} inside a bucket")
        children = self._branch_children(page)
        for _key, pgid in (reversed(children) if reverse else children):
            yield from self._walk(self._page(pgid), depth + 1, reverse=reverse)

    def _bucket_root(self, value: bytes) -> bytes:
        if len(value) < 16:
            raise CorruptDB("bucket header too short")
        root, _seq = struct.unpack_from("<QQ", value)
        if root == 0:  # inline bucket: its only page follows the header
            return value[16:]
        return self._page(root)

    # -- locating a value in the file --------------------------------------------------------
    def _items_at(self, page: bytes, base: int, depth: int = 0) -> Iterator[tuple[bytes, bytes, int, int]]:
        """Like :meth:`_walk`, with each value's offset in the file (``base``: the page's)."""
        if depth > _MAX_DEPTH:
            raise CorruptDB("B+tree deeper than possible (cycle?)")
        flags, count = self._elements(page)
        if flags & LEAF:
            for i in range(count):
                at = PAGE_HEADER + i * ELEMENT
                eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, at)
                key = self._slice(page, at + pos, ksize)
                value = self._slice(page, at + pos + ksize, vsize)
                yield key, value, eflags, base + at + pos + ksize
            return
        if not flags & BRANCH:
            raise CorruptDB(f"unexpected page type {flags:#x} inside a bucket")
        for _key, pgid in self._branch_children(page):
            yield from self._items_at(self._page(pgid), pgid * self.meta.page_size, depth + 1)

    def locate(self, bucket: bytes, key: bytes) -> tuple[int, bytes] | None:
        """The file offset and bytes of ``key``'s value in top-level ``bucket`` (None: absent)."""
        root = self.meta.root
        for name, value, flags, offset in self._items_at(self._page(root), root * self.meta.page_size):
            if name != bucket or not flags & BUCKET_LEAF:
                continue
            if len(value) < 16:
                raise CorruptDB("bucket header too short")
            sub_root = struct.unpack_from("<Q", value)[0]
            page, base = (value[16:], offset + 16) if sub_root == 0 else (self._page(sub_root),
                                                                          sub_root * self.meta.page_size)
            for k, v, f, at in self._items_at(page, base):
                if k == key and not f & BUCKET_LEAF:
                    return at, v
            return None
        return None

    # -- buckets -----------------------------------------------------------------------------
    def bucket_names(self) -> list[bytes]:
        return [k for k, _v, f in self._walk(self._page(self.meta.root)) if f & BUCKET_LEAF]

    def _find_bucket(self, name: bytes) -> bytes | None:
        for key, value, flags in self._walk(self._page(self.meta.root)):
            if key == name and flags & BUCKET_LEAF:
                return self._bucket_root(value)
        return None

    def bucket_sequence(self, name: bytes) -> int:
        """The sequence number kept in a top-level bucket's header (0 when absent)."""
        for key, value, flags in self._walk(self._page(self.meta.root)):
            if key == name and flags & BUCKET_LEAF:
                if len(value) < 16:
                    raise CorruptDB("bucket header too short")
                return struct.unpack_from("<Q", value, 8)[0]
        return 0

    def elements(self, bucket: bytes) -> Iterator[tuple[bytes, bytes, int]]:
        """Every element of a top-level bucket in key order as (key, value, flags); an element
        with ``BUCKET_LEAF`` in its flags is a nested bucket (its value is that bucket's header)."""
        for _page, items in self.leaves(bucket):
            yield from items

    def items(self, bucket: bytes) -> Iterator[tuple[bytes, bytes]]:
        root = self._find_bucket(bucket)
        if root is None:
            return
        for key, value, flags in self._walk(root):
            if not flags & BUCKET_LEAF:
                yield key, value

    def last_key(self, bucket: bytes) -> bytes | None:
        root = self._find_bucket(bucket)
        if root is None:
            return None
        for key, _value, flags in self._walk(root, reverse=True):
            if not flags & BUCKET_LEAF:
                return key
        return None


def _main_revision(raw: bytes) -> int:
    if len(raw) < 8:
        raise CorruptDB(f"revision key of {len(raw)} bytes")
    return int.from_bytes(raw[:8], "big")


@dataclass(frozen=True)
class EtcdDB:
    revision: int
    members: list[dict]
    buckets: list[str]


def read_etcd_db(path) -> EtcdDB:
    """The current revision and the membership of an etcd v3 backend file."""
    import json

    with BoltReader.open(path) as db:
        names = [n.decode("utf-8", "replace") for n in db.bucket_names()]
        if "key" not in names or "meta" not in names:
            raise CorruptDB(f"not an etcd backend (buckets: {', '.join(names) or 'none'})")
        last = db.last_key(b"key")
        revision = _main_revision(last) if last else 0
        meta = dict(db.items(b"meta"))
        if b"finishedCompactRev" in meta:
            revision = max(revision, _main_revision(meta[b"finishedCompactRev"]))
        members = []
        for _key, value in db.items(b"members"):
            try:
                members.append(json.loads(value))
            except ValueError as exc:
                raise CorruptDB(f"unreadable member record: {exc}") from None
        return EtcdDB(revision=revision, members=members, buckets=names)


# etcd's auth switch: bucket ``auth``, key ``authEnabled``, one byte (1 on, 0 off).
AUTH_BUCKET, AUTH_ENABLED = b"auth", b"authEnabled"


def auth_enabled(path) -> bool:
    """Whether etcd authentication is enabled in the backend file at ``path``."""
    with BoltReader.open(path) as db:
        found = db.locate(AUTH_BUCKET, AUTH_ENABLED)
    return found is not None and found[1] == b"\x01"


def set_auth_enabled(path, enabled: bool) -> None:
    """Switch etcd authentication on or off in a backend file no process has open.

    The flag is one byte in a leaf page; bbolt keeps checksums only on its meta pages, so
    rewriting that byte in place (same length) leaves a valid database, exactly what etcd's own
    ``AuthEnable``/``AuthDisable`` would store, less the auth revision they bump. The restorer
    uses it to replay deltas into a restored db whose auth is on (the replay writes as no user)
    and to switch it back before the data dir is used; users, roles and permissions are not
    touched."""
    import os

    with BoltReader.open(path) as db:
        found = db.locate(AUTH_BUCKET, AUTH_ENABLED)
    if found is None or len(found[1]) != 1:
        if not enabled:
            return  # never enabled: nothing to switch off
        raise CorruptDB(f"{path}: no one-byte authEnabled flag to switch on")
    offset, _value = found
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x01" if enabled else b"\x00", offset)
        os.fsync(fd)
    finally:
        os.close(fd)
