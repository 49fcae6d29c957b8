"""Snapshot compression: policies, object-name suffixes and streaming (de)compression.

The policies and suffixes are those of the Go etcd-backup-restore (gzip ``.gz``, zlib
``.zlib``, lzw ``.Z``, disabled: no suffix), plus our own zstd ``.zst``.  A reader picks the
codec from the suffix alone, so any snapshot in a shared bucket can be read whoever wrote it.

Everything here streams with bounded memory: :func:`compressing_reader` and
:func:`decompressing_reader` are pull-model file objects that read their source a chunk at a
time and never hold more than one chunk of output, whatever the snapshot size.
"""

from __future__ import annotations

import enum
import io
from typing import TYPE_CHECKING, BinaryIO, Protocol, cast

# ISA-L's deflate writes and reads the same gzip/zlib streams as zlib (and Go) at several times
# zlib's speed; see the levels below.
from isal import isal_zlib as deflate

from .errors import ConfigError, IntegrityError, not_installed
from .lzw import LZWCompressor, LZWDecompressor, LZWError

if TYPE_CHECKING:
    from .snapstore.streams import ByteStream

# isal's stub declares ``error`` an Exception instance; it is the exception class.
_DeflateError = cast(type[Exception], deflate.error)

__all__ = [
    "Compression",
    "SUFFIXES",
    "GZIP_LEVEL",
    "ZLIB_LEVEL",
    "ZSTD_LEVEL",
    "normalize_policy",
    "require_codec",
    "suffix_for",
    "policy_for_suffix",
    "make_compressor",
    "compressing_reader",
    "decompressing_reader",
    "compress_bytes",
    "decompress_bytes",
]


class Compression(enum.StrEnum):
    GZIP = "gzip"
    ZLIB = "zlib"
    LZW = "lzw"
    ZSTD = "zstd"


SUFFIXES: dict[str, Compression] = {
    ".gz": Compression.GZIP,
    ".zlib": Compression.ZLIB,
    ".Z": Compression.LZW,
    ".zst": Compression.ZSTD,
}
_SUFFIX_OF = {policy: suffix for suffix, policy in SUFFIXES.items()}
_DISABLED = frozenset({"", "none", "disabled", "off", "false"})

# gzip and zlib are written with ISA-L at its level 1 (ISA-L has levels 0-3). Measured on a
# 64 MiB etcd db (bench data: ~96 KiB base64 values), one core, MB/s of input / output size:
#   zlib level 2: 48 MB/s, 75.9% | zlib level 6 (Go's default): 41 MB/s, 74.2%
#   zlib-ng level 2: 88 MB/s, 73.8%
#   ISA-L level 0: 401 MB/s, 104% | level 1: 470 MB/s, 73.7% | level 2: 392 MB/s | level 3: 357 MB/s, 73.7%
# Inflate: zlib 258 MB/s, ISA-L 590 MB/s. A full snapshot is compressed while etcd streams it
# and inflated on the restore's critical path, so both speeds are what an operator waits for.
GZIP_LEVEL = 1
ZLIB_LEVEL = 1
# zstd's own default: already faster than gzip level 1 and smaller than gzip level 9.
ZSTD_LEVEL = 3

# How much of the source a compressing reader pulls per step.
_COMPRESS_CHUNK = 1 << 16
# Upper bound on one step of inflate output (the zlib API supports a hard cap).
_INFLATE_MAX_OUT = 1 << 20
# The other decoders cannot cap their output, so the cap comes from feeding them little: a
# zstd RLE block turns 4 input bytes into up to 128 KiB (256 B -> at most 8 MiB), an LZW code
# of 1.5 bytes into at most 4 KiB (4 KiB -> at most ~11 MiB).
_ZSTD_FEED = 256
_LZW_FEED = 1 << 12
_RAW_FEED = 1 << 16


# -- policies and suffixes -------------------------------------------------------------------


def normalize_policy(policy: str | Compression | None) -> Compression | None:
    """The policy for a configured value; ``None`` when compression is disabled."""
    if policy is None:
        return None
    if isinstance(policy, Compression):
        return policy
    name = str(policy).strip().lower()
    if name in _DISABLED:
        return None
    try:
        return Compression(name)
    except ValueError:
        choices = ", ".join(p.value for p in Compression)
        raise ConfigError(
            f"unknown compression policy {policy!r} (expected one of {choices})"
        ) from None


def require_codec(policy: str | Compression | None) -> None:
    """Raise ConfigError when the codec of ``policy`` is not installed: zstd is optional (the
    ``zstd`` extra), every other codec comes with the tool."""
    if normalize_policy(policy) is Compression.ZSTD:
        _zstandard()


def _zstandard():
    try:
        import zstandard
    except ImportError:
        raise not_installed("zstd compression (.zst)", "zstandard", "zstd") from None
    return zstandard


def suffix_for(policy: str | Compression | None) -> str:
    """Object-name suffix for a policy: ``.gz``, ``.zlib``, ``.Z``, ``.zst``; ``""`` if disabled."""
    p = normalize_policy(policy)
    return "" if p is None else _SUFFIX_OF[p]


def policy_for_suffix(suffix: str) -> Compression | None:
    """Policy a snapshot was written with, from its suffix; ``None`` means uncompressed."""
    if not suffix:
        return None
    try:
        return SUFFIXES[suffix]
    except KeyError:
        known = ", ".join(repr(s) for s in SUFFIXES)
        raise IntegrityError(
            f"unknown compression suffix {suffix!r} (known: {known}, or none for uncompressed)"
        ) from None


# -- compressors -----------------------------------------------------------------------------


class Compressor(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class _Identity:
    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def flush(self) -> bytes:
        return b""


class _ZstdCompressor:
    def __init__(self, level: int) -> None:
        # The frame checksum lets a reader tell a damaged snapshot from a valid one.
        self._obj = _zstandard().ZstdCompressor(level=level, write_checksum=True).compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._obj.compress(data)

    def flush(self) -> bytes:
        return self._obj.flush()


def make_compressor(policy: str | Compression | None, level: int | None = None) -> Compressor:
    """A push-model compressor (``compress()`` any number of times, then ``flush()`` once)."""
    p = normalize_policy(policy)
    if p is None:
        return _Identity()
    if p is Compression.GZIP:
        return deflate.compressobj(GZIP_LEVEL if level is None else level, deflate.DEFLATED, 31)
    if p is Compression.ZLIB:
        return deflate.compressobj(ZLIB_LEVEL if level is None else level, deflate.DEFLATED, 15)
    if p is Compression.LZW:
        return LZWCompressor()
    return _ZstdCompressor(ZSTD_LEVEL if level is None else level)


# -- decoders --------------------------------------------------------------------------------
#
# Uniform shape for the reader: ``decode(data)`` returns output for the given input (with
# ``data`` possibly empty to drain held-back input while ``has_pending()``), ``finish()`` is
# called once the source is exhausted and raises if the stream is incomplete, and ``done``
# means the stream has ended and no further input is wanted.


class _Decoder:
    feed_size = _RAW_FEED
    done = False

    def has_pending(self) -> bool:
        return False

    def decode(self, data: bytes) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        return b""


class _IdentityDecoder(_Decoder):
    def decode(self, data: bytes) -> bytes:
        return data


class _InflateDecoder(_Decoder):
    """gzip or zlib (ISA-L's inflate, zlib's API) with a hard cap on each step's output."""

    def __init__(self, policy: Compression) -> None:
        self._name = policy.value
        self._wbits = 31 if policy is Compression.GZIP else 15
        # Go's gzip reader is multistream by default (concatenated members are one stream);
        # its zlib reader stops after the first stream and ignores what follows.
        self._multi = policy is Compression.GZIP
        self._d = deflate.decompressobj(self._wbits)
        self._carry = b""

    def has_pending(self) -> bool:
        return bool(self._carry or self._d.unconsumed_tail)

    def decode(self, data: bytes) -> bytes:
        if self._carry:
            data, self._carry = self._carry + data, b""
        elif self._d.unconsumed_tail:
            data = self._d.unconsumed_tail + data
        if not data:
            return b""
        if self._d.eof:
            self._d = deflate.decompressobj(self._wbits)
        try:
            out = self._d.decompress(data, _INFLATE_MAX_OUT)
        except _DeflateError as e:
            raise IntegrityError(f"corrupt {self._name} stream: {e}") from e
        self._after_step()
        return out

    def _after_step(self) -> None:
        if self._d.eof:
            if not self._multi:
                self.done = True
            elif self._d.unused_data:
                self._carry = self._d.unused_data

    def finish(self) -> bytes:
        if self.done or self._d.eof:
            return b""
        try:
            out = self._d.flush()
        except _DeflateError as e:
            raise IntegrityError(f"corrupt {self._name} stream: {e}") from e
        if not self._d.eof:
            raise IntegrityError(f"truncated {self._name} stream")
        self._after_step()
        return out


class _ZstdDecoder(_Decoder):
    feed_size = _ZSTD_FEED

    def __init__(self) -> None:
        self._zstd = _zstandard()
        self._dctx = self._zstd.ZstdDecompressor()
        self._d = self._dctx.decompressobj()
        self._fed = False
        self._carry = b""

    def has_pending(self) -> bool:
        return bool(self._carry)

    def decode(self, data: bytes) -> bytes:
        if self._carry:
            data, self._carry = self._carry + data, b""
        if not data:
            return b""
        # Concatenated frames are one stream, as with the zstd command-line tool.
        if self._d.eof:
            self._d = self._dctx.decompressobj()
        self._fed = True
        try:
            out = self._d.decompress(data)
        except self._zstd.ZstdError as e:
            raise IntegrityError(f"corrupt zstd stream: {e}") from e
        if self._d.eof and self._d.unused_data:
            self._carry = self._d.unused_data
        return out

    def finish(self) -> bytes:
        if not self._fed:
            raise IntegrityError("empty zstd stream")
        if not self._d.eof:
            raise IntegrityError("truncated zstd stream")
        return b""


class _LZWDecoder(_Decoder):
    feed_size = _LZW_FEED

    def __init__(self) -> None:
        self._d = LZWDecompressor()

    def decode(self, data: bytes) -> bytes:
        try:
            out = self._d.decompress(data)
        except LZWError as e:
            raise IntegrityError(f"corrupt lzw stream: {e}") from e
        # Like Go's reader, nothing after the EOF code is read.
        self.done = self._d.eof
        return out

    def finish(self) -> bytes:
        if not self._d.eof:
            raise IntegrityError("truncated lzw stream (no EOF code)")
        return b""


def _decoder_for(policy: Compression | None) -> _Decoder:
    if policy is None:
        return _IdentityDecoder()
    if policy is Compression.ZSTD:
        return _ZstdDecoder()
    if policy is Compression.LZW:
        return _LZWDecoder()
    return _InflateDecoder(policy)


# -- pull-model readers ----------------------------------------------------------------------


class _ChunkReader(io.BufferedIOBase):
    """Readable file object over a producer of output chunks.

    ``read(n)`` returns exactly ``n`` bytes unless the stream ends first, so an uploader can
    cut fixed-size parts from it.  Closing it does not close the source.
    """

    def __init__(self) -> None:
        super().__init__()
        self._chunk = b""
        self._pos = 0
        self._exhausted = False
        self.bytes_in = 0
        self.bytes_out = 0

    def _next_chunk(self) -> bytes | None:
        """The next piece of output (may be empty), or None once there is no more."""
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while not self._exhausted:
            chunk = self._next_chunk()
            if chunk is None:
                self._exhausted = True
                break
            if chunk:
                self._chunk = chunk
                self._pos = 0
                return True
        return False

    def _take(self, limit: int) -> bytes:
        chunk, pos = self._chunk, self._pos
        if pos == 0 and len(chunk) <= limit:
            piece = chunk
        else:
            piece = chunk[pos : pos + limit]
        self._pos = pos + len(piece)
        self.bytes_out += len(piece)
        return piece

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        if size is None or size < 0:
            parts = []
            while self._pos < len(self._chunk) or self._fill():
                parts.append(self._take(len(self._chunk)))
            return b"".join(parts)
        parts = []
        need = size
        while need > 0:
            if self._pos >= len(self._chunk) and not self._fill():
                break
            piece = self._take(need)
            parts.append(piece)
            need -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, size: int = -1) -> bytes:
        self._checkClosed()
        if self._pos >= len(self._chunk) and not self._fill():
            return b""
        return self._take(len(self._chunk) if size is None or size < 0 else size)

    def readinto(self, b) -> int:
        data = self.read(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def readinto1(self, b) -> int:
        data = self.read1(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._chunk = b""
        super().close()


def _read_source(raw: ByteStream, n: int) -> bytes:
    data = raw.read(n)
    if data is None:
        raise BlockingIOError("source returned no data (non-blocking streams are not supported)")
    return data


class _PassThrough(io.RawIOBase):
    """``raw`` unchanged, with the compressing reader's counters."""

    def __init__(self, raw: ByteStream) -> None:
        super().__init__()
        self._raw = raw
        self.policy = None
        self.bytes_in = 0
        self.bytes_out = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        data = _read_source(self._raw, -1 if size is None else size)
        self.bytes_in += len(data)
        self.bytes_out += len(data)
        return data

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _CompressingReader(_ChunkReader):
    def __init__(self, raw: ByteStream, policy: Compression | None, level: int | None) -> None:
        super().__init__()
        self._raw = raw
        self._comp = make_compressor(policy, level)
        self._flushed = False
        self.policy = policy

    def _next_chunk(self) -> bytes | None:
        if self._flushed:
            return None
        data = _read_source(self._raw, _COMPRESS_CHUNK)
        if data:
            self.bytes_in += len(data)
            return self._comp.compress(data)
        self._flushed = True
        return self._comp.flush()


class _DecompressingReader(_ChunkReader):
    def __init__(self, raw: ByteStream, suffix: str) -> None:
        super().__init__()
        self.policy = policy_for_suffix(suffix)
        self._raw = raw
        self._dec = _decoder_for(self.policy)
        self._raw_eof = False

    def _next_chunk(self) -> bytes | None:
        dec = self._dec
        if dec.has_pending():
            return dec.decode(b"")
        if dec.done:
            return None
        if self._raw_eof:
            # finish() may surface more held-back input (another gzip member), or none.
            out = dec.finish()
            if dec.has_pending():
                return out
            return out if out else None
        data = _read_source(self._raw, dec.feed_size)
        if not data:
            self._raw_eof = True
            return b""
        self.bytes_in += len(data)
        return dec.decode(data)


def compressing_reader(
    raw: ByteStream, policy: str | Compression | None, *, level: int | None = None
) -> BinaryIO:
    """A readable file object yielding ``raw`` compressed with ``policy`` (pulled on demand).

    ``policy`` None/"none"/"disabled" passes the bytes through (each read is one read of ``raw``,
    nothing copied).  ``bytes_in``/``bytes_out`` count what was read from ``raw`` and returned.
    """
    # A BufferedIOBase is a binary file; typeshed's BinaryIO is a nominal type it does not derive from.
    normalized = normalize_policy(policy)
    if normalized is None:
        return _PassThrough(raw)  # type: ignore[return-value]  # as below
    return _CompressingReader(raw, normalized, level)  # type: ignore[return-value]


def decompressing_reader(raw: ByteStream, suffix: str) -> BinaryIO:
    """A readable file object yielding the decompressed bytes of ``raw``, codec chosen by suffix.

    Raises :class:`IntegrityError` for an unknown suffix (immediately) and for corrupt or
    truncated data (while reading).
    """
    return _DecompressingReader(raw, suffix)  # type: ignore[return-value]  # as compressing_reader


def compress_bytes(
    data: bytes, policy: str | Compression | None, *, level: int | None = None
) -> bytes:
    comp = make_compressor(policy, level)
    return comp.compress(data) + comp.flush()


def decompress_bytes(data: bytes, suffix: str) -> bytes:
    return decompressing_reader(io.BytesIO(data), suffix).read()
