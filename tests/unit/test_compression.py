"""Compression policies, suffixes and the streaming readers."""

from __future__ import annotations

import gzip
import io
import random
import zlib

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from etcdbr import compression as C
from etcdbr.compression import (
    SUFFIXES,
    Compression,
    compress_bytes,
    compressing_reader,
    decompress_bytes,
    decompressing_reader,
    policy_for_suffix,
    suffix_for,
)
from etcdbr.errors import ConfigError, IntegrityError

POLICIES = [None, "gzip", "zlib", "lzw", "zstd"]
COMPRESSED = ["gzip", "zlib", "lzw", "zstd"]


class ShortReads(io.RawIOBase):
    """A source that hands out at most ``step`` bytes per read, like a socket."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        self.reads += 1
        n = min(len(b), self._step, len(self._data) - self._pos)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


class Zeros(io.RawIOBase):
    """``size`` zero bytes generated on demand, so the test itself holds no big buffer."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self._left)
        b[:n] = bytes(n)
        self._left -= n
        return n


def bolt_like(size: int, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        if rnd.random() < 0.1:
            out += bytes(4096)
            continue
        key = f"/registry/pods/ns-{rnd.randrange(20)}/pod-{rnd.getrandbits(32):08x}".encode()
        out += key + b"\x0a\x02v1" + rnd.randbytes(rnd.randrange(4, 60)) + b'{"kind":"Pod"}'
    return bytes(out[:size])


def read_in_parts(reader, sizes) -> bytes:
    parts = []
    sizes = iter(sizes)
    while True:
        n = next(sizes, 1 << 16)
        piece = reader.read(n)
        if not piece:
            return b"".join(parts)
        assert len(piece) <= n
        parts.append(piece)


# -- policies and suffixes -------------------------------------------------------------------


def test_suffixes_match_the_go_tool():
    assert suffix_for("gzip") == ".gz"
    assert suffix_for("zlib") == ".zlib"
    assert suffix_for("lzw") == ".Z"
    assert suffix_for("zstd") == ".zst"
    assert suffix_for(Compression.LZW) == ".Z"
    for disabled in (None, "", "none", "disabled"):
        assert suffix_for(disabled) == ""
    assert SUFFIXES == {".gz": "gzip", ".zlib": "zlib", ".Z": "lzw", ".zst": "zstd"}


def test_suffix_round_trip_and_unknown_values():
    for policy in Compression:
        assert policy_for_suffix(suffix_for(policy)) is policy
    assert policy_for_suffix("") is None
    for bad in (".bz2", ".z", ".gzip", "gz", ".ZST"):
        with pytest.raises(IntegrityError, match="unknown compression suffix"):
            policy_for_suffix(bad)
    with pytest.raises(ConfigError, match="unknown compression policy"):
        suffix_for("brotli")


def test_unknown_suffix_fails_before_reading():
    src = ShortReads(b"whatever", 4)
    with pytest.raises(IntegrityError):
        decompressing_reader(src, ".xz")
    assert src.reads == 0


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_round_trip_empty(policy):
    blob = compress_bytes(b"", policy)
    assert decompress_bytes(blob, suffix_for(policy)) == b""
    assert compressing_reader(io.BytesIO(b""), policy).read() == blob


@pytest.mark.parametrize("policy", POLICIES)
def test_round_trip_bolt_like_through_readers(policy):
    data = bolt_like(300_000)
    reader = compressing_reader(ShortReads(data, 10_000), policy)
    blob = read_in_parts(reader, [1, 7, 4096, 100_000])
    assert reader.bytes_in == len(data)
    assert reader.bytes_out == len(blob)
    if policy is not None:
        assert len(blob) < len(data)
    out = decompressing_reader(ShortReads(blob, 333), suffix_for(policy))
    assert read_in_parts(out, [5, 65_536, 1, 1 << 20]) == data
    assert out.bytes_in == len(blob) and out.bytes_out == len(data)


@settings(max_examples=25, deadline=None)
@given(
    policy=st.sampled_from(POLICIES),
    data=st.binary(max_size=5000)
    | st.lists(st.sampled_from([b"etcd", b"\x00" * 50, b"/registry/"]), max_size=300).map(b"".join),
    read_sizes=st.lists(st.integers(min_value=1, max_value=3000), max_size=8),
    step=st.integers(min_value=1, max_value=4000),
)
def test_property_round_trip(policy, data, read_sizes, step):
    blob = read_in_parts(compressing_reader(ShortReads(data, step), policy), read_sizes)
    assert decompress_bytes(blob, suffix_for(policy)) == data
    reader = decompressing_reader(ShortReads(blob, step), suffix_for(policy))
    assert read_in_parts(reader, read_sizes) == data


def test_lzw_crossing_table_resets_through_readers():
    data = random.Random(5).randbytes(30_000)  # ~8 table resets
    blob = compress_bytes(data, "lzw")
    assert decompress_bytes(blob, ".Z") == data
    assert read_in_parts(decompressing_reader(ShortReads(blob, 1), ".Z"), [3] * 1000) == data


def test_read_returns_full_parts_until_the_end():
    # An uploader cuts fixed-size parts with read(n); only the last may be short.
    data = bolt_like(200_000)
    reader = compressing_reader(ShortReads(data, 999), "gzip")
    parts = []
    while piece := reader.read(4096):
        parts.append(piece)
    assert all(len(p) == 4096 for p in parts[:-1])
    assert 0 < len(parts[-1]) <= 4096
    assert decompress_bytes(b"".join(parts), ".gz") == data


def test_file_object_protocol():
    data = bolt_like(50_000)
    blob = compress_bytes(data, "zstd")
    reader = decompressing_reader(io.BytesIO(blob), ".zst")
    assert reader.readable()
    buf = bytearray(1000)
    assert reader.readinto(buf) == 1000 and bytes(buf) == data[:1000]
    first = reader.read1(10)
    assert first == data[1000 : 1000 + len(first)] and 0 < len(first) <= 10
    rest = reader.read()
    assert data == bytes(buf) + first + rest
    assert reader.read(10) == b"" and reader.read() == b""
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


def test_closing_a_reader_leaves_the_source_open():
    src = io.BytesIO(compress_bytes(b"abc", "gzip"))
    reader = decompressing_reader(src, ".gz")
    reader.close()
    assert not src.closed


# -- interoperability ------------------------------------------------------------------------


def test_gzip_and_zlib_interoperate_with_stdlib():
    data = bolt_like(100_000)
    assert gzip.decompress(compress_bytes(data, "gzip")) == data
    assert zlib.decompress(compress_bytes(data, "zlib")) == data
    # Headers with a name and mtime, as other gzip writers produce them.
    assert decompress_bytes(gzip.compress(data, mtime=1234567890), ".gz") == data
    assert decompress_bytes(zlib.compress(data, 9), ".zlib") == data


def test_gzip_members_concatenate_like_go_multistream():
    blob = gzip.compress(b"first ") + compress_bytes(b"second", "gzip")
    assert decompress_bytes(blob, ".gz") == b"first second"
    reader = decompressing_reader(ShortReads(blob, 3), ".gz")
    assert read_in_parts(reader, [2] * 20) == b"first second"


def test_zlib_ignores_data_after_the_stream_like_go():
    assert decompress_bytes(compress_bytes(b"payload", "zlib") + b"junk", ".zlib") == b"payload"


def test_zstd_interoperates_and_checksums():
    data = bolt_like(100_000)
    blob = compress_bytes(data, "zstd")
    assert zstandard.ZstdDecompressor().decompressobj().decompress(blob) == data
    params = zstandard.get_frame_parameters(blob)
    assert params.has_checksum
    foreign = zstandard.ZstdCompressor(level=19).compress(data)
    assert decompress_bytes(foreign, ".zst") == data
    # Concatenated frames are one stream, as with the zstd command-line tool.
    assert decompress_bytes(compress_bytes(b"a", "zstd") + compress_bytes(b"b", "zstd"), ".zst") == b"ab"


def test_lzw_reads_go_written_stream():
    # Go's compress/lzw test vector (LSB, litWidth 8).
    go = b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04\x12\x34\xb8\xb0\xe0\xc1\x84\x01\x01"
    assert decompress_bytes(go, ".Z") == b"TOBEORNOTTOBEORTOBEORNOT"
    ours = compress_bytes(b"TOBEORNOTTOBEORTOBEORNOT", "lzw")
    assert ours.hex() == "00a93c1152e48914274fa80824687061c183090302"


# -- damaged data ----------------------------------------------------------------------------


@pytest.mark.parametrize("policy", COMPRESSED)
def test_truncated_stream_is_an_integrity_error(policy):
    blob = compress_bytes(bolt_like(60_000), policy)
    for cut in (len(blob) // 2, len(blob) - 1):
        with pytest.raises(IntegrityError):
            decompress_bytes(blob[:cut], suffix_for(policy))
        with pytest.raises(IntegrityError):
            read_in_parts(decompressing_reader(ShortReads(blob[:cut], 500), suffix_for(policy)), [])


@pytest.mark.parametrize("policy", COMPRESSED)
def test_empty_object_is_an_integrity_error(policy):
    with pytest.raises(IntegrityError):
        decompress_bytes(b"", suffix_for(policy))


@pytest.mark.parametrize("policy", ["gzip", "zlib", "zstd"])
def test_corruption_is_detected_by_the_checksum(policy):
    blob = bytearray(compress_bytes(bolt_like(60_000), policy))
    blob[len(blob) // 2] ^= 0x55
    with pytest.raises(IntegrityError, match="corrupt"):
        decompress_bytes(bytes(blob), suffix_for(policy))


def test_gzip_trailing_garbage_is_an_error():
    with pytest.raises(IntegrityError):
        decompress_bytes(compress_bytes(b"payload", "gzip") + b"junk", ".gz")


def test_lzw_invalid_code_is_an_integrity_error():
    # CLEAR then code 300, which nothing has defined yet.
    bad = (256 | 300 << 9 | 257 << 18).to_bytes(4, "little")
    with pytest.raises(IntegrityError, match="corrupt lzw"):
        decompress_bytes(bad, ".Z")


# -- bounded memory --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "size"),
    [("gzip", 64 << 20), ("zlib", 64 << 20), ("zstd", 256 << 20), ("lzw", 8 << 20)],
)
def test_highly_compressible_input_streams_in_bounded_steps(policy, size):
    reader = compressing_reader(Zeros(size), policy)
    blob = reader.read()
    assert reader.bytes_in == size
    out = decompressing_reader(io.BytesIO(blob), suffix_for(policy))
    total, biggest = 0, 0
    while piece := out.read(1 << 20):
        total += len(piece)
        biggest = max(biggest, len(out._chunk))
    assert total == size
    # One decoder step never produces more than ~16 MiB, whatever the ratio.
    assert biggest <= 16 << 20


def test_compressing_reader_holds_one_chunk_at_a_time():
    reader = compressing_reader(Zeros(32 << 20), "gzip")
    biggest = 0
    while reader.read(1 << 16):
        biggest = max(biggest, len(reader._chunk))
    assert reader.bytes_in == 32 << 20
    assert biggest <= 1 << 17


def test_compressor_levels_are_fast_defaults():
    assert 1 <= C.GZIP_LEVEL <= 6 and 1 <= C.ZLIB_LEVEL <= 6
