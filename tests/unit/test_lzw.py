"""Go ``compress/lzw`` (LSB, litWidth 8) compatibility of etcdbr.lzw.

The expected streams come from two independent sources: a hand trace of the algorithm packed
by a deliberately naive bit packer, and the test vectors of Go's own ``reader_test.go``.  A
small reference encoder written for clarity (string dictionary, explicit Go state) checks the
fast encoder byte for byte on arbitrary inputs, including table resets.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etcdbr.lzw import LZWCompressor, LZWDecompressor, LZWError, compress, decompress

CLEAR, EOF = 256, 257
TOBE = b"TOBEORNOTTOBEORTOBEORNOT"
# Hand trace of TOBE (first free code 258): T O B E O R N O T, then TO(258) BE(260) OR(262)
# TOB(267) EO(261) RN(263) OT(265).  The dictionary tops out at 273, so every code is 9 bits.
TOBE_CODES = [CLEAR, 84, 79, 66, 69, 79, 82, 78, 79, 84, 258, 260, 262, 267, 261, 263, 265, EOF]
TOBE_STREAM = bytes.fromhex("00a93c1152e48914274fa80824687061c183090302")

# Vectors from Go's src/compress/lzw/reader_test.go.  They predate Go 1.17, whose writer
# added the leading CLEAR, so they also cover streams without one.
GO_TOBE_NO_CLEAR = b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04\x12\x34\xb8\xb0\xe0\xc1\x84\x01\x01"
GO_TOBE_TRUNCATED = b"\x54\x9e\x08\x29\xf2\x44\x8a\x93\x27\x54\x04"
GO_EMPTY_NO_CLEAR = b"\x01\x01"
GO_GIF_RAW = b"\x28\xff\xff\xff\x28\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"
GO_GIF_STREAM = b"\x00\x51\xfc\x1b\x28\x70\xa0\xc1\x83\x01\x01"


def pack(codes_and_widths: list[tuple[int, int]]) -> bytes:
    """Naive LSB-first packing, one bit at a time."""
    bits: list[int] = []
    for code, width in codes_and_widths:
        bits.extend((code >> i) & 1 for i in range(width))
    bits.extend([0] * (-len(bits) % 8))
    return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


def go_writer_widths(codes: list[int]) -> list[tuple[int, int]]:
    """Widths Go's writer uses: grow when hi reaches 2**width, reset after CLEAR."""
    out = []
    hi, width = EOF, 9
    for code in codes:
        out.append((code, width))
        if code == CLEAR:
            hi, width = EOF, 9
        elif code != EOF:
            hi += 1
            if hi == 1 << width:
                width += 1
    return out


def reference_codes(data: bytes) -> list[int]:
    """Go's writer, state for state, with a dictionary of byte strings."""
    codes = [CLEAR]
    if not data:
        return codes + [EOF]
    table = {bytes([i]): i for i in range(256)}
    hi = EOF
    match = data[:1]
    for i in range(1, len(data)):
        candidate = match + data[i : i + 1]
        if candidate in table:
            match = candidate
            continue
        codes.append(table[match])
        hi += 1
        if hi == 4095:
            codes.append(CLEAR)
            table = {bytes([i]): i for i in range(256)}
            hi = EOF
        else:
            table[candidate] = hi
        match = data[i : i + 1]
    codes.append(table[match])
    hi += 1
    if hi == 4095:
        codes.append(CLEAR)
    return codes + [EOF]


def reference_stream(data: bytes) -> bytes:
    return pack(go_writer_widths(reference_codes(data)))


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def stream_compress(data: bytes, cuts: list[int]) -> bytes:
    c = LZWCompressor()
    return b"".join(c.compress(piece) for piece in chunks(data, cuts)) + c.flush()


def stream_decompress(data: bytes, cuts: list[int]) -> bytes:
    d = LZWDecompressor()
    out = b"".join(d.decompress(piece) for piece in chunks(data, cuts))
    d.flush()
    return out


# -- known answers ---------------------------------------------------------------------------


def test_hand_traced_tobe_vector():
    assert reference_codes(TOBE) == TOBE_CODES
    assert pack([(c, 9) for c in TOBE_CODES]) == TOBE_STREAM
    assert compress(TOBE) == TOBE_STREAM
    assert decompress(TOBE_STREAM) == TOBE


def test_hand_trace_matches_go_test_vector_without_leading_clear():
    # Go's pre-1.17 vector is the same code sequence minus the leading CLEAR.
    assert pack([(c, 9) for c in TOBE_CODES[1:]]) == GO_TOBE_NO_CLEAR


def test_go_reader_vectors():
    assert decompress(GO_TOBE_NO_CLEAR) == TOBE
    assert decompress(GO_EMPTY_NO_CLEAR) == b""
    assert decompress(GO_GIF_STREAM) == GO_GIF_RAW


def test_go_truncated_vector_is_an_error_after_a_partial_result():
    d = LZWDecompressor()
    partial = d.decompress(GO_TOBE_TRUNCATED)
    assert partial and TOBE.startswith(partial)
    assert not d.eof
    with pytest.raises(LZWError, match="unexpected end"):
        d.flush()
    with pytest.raises(LZWError):
        decompress(GO_TOBE_TRUNCATED)


def test_empty_input_is_clear_then_eof():
    # Go >= 1.17: Close() without a Write still sends the starting CLEAR.
    assert compress(b"") == pack([(CLEAR, 9), (EOF, 9)]) == bytes.fromhex("000302")
    assert decompress(compress(b"")) == b""
    c = LZWCompressor()
    assert c.compress(b"") == b""
    assert c.flush() == bytes.fromhex("000302")


def test_single_byte():
    assert compress(b"A") == pack([(CLEAR, 9), (65, 9), (EOF, 9)])
    assert decompress(compress(b"A")) == b"A"


# -- Go writer edge cases, checked against the reference encoder -----------------------------


def _find_length(data: bytes, lo: int, hi: int, predicate) -> int:
    for n in range(lo, hi):
        if predicate(reference_codes(data[:n])):
            return n
    raise AssertionError("no length with the wanted property")


RANDOM_4K = random.Random(1234).randbytes(6000)


def test_flush_sends_clear_when_the_last_code_fills_the_table():
    # Go's Close() runs incHi after the final code; reaching 4095 there sends CLEAR before EOF.
    n = _find_length(RANDOM_4K, 3700, 4200, lambda codes: codes[-2] == CLEAR)
    data = RANDOM_4K[:n]
    assert compress(data) == reference_stream(data)
    assert decompress(compress(data)) == data


def test_flush_widens_eof_when_the_last_code_crosses_a_width():
    # The final code bumps hi to 512, so EOF goes out 10 bits wide.  In the first segment the
    # extra bit always lands in the padding; after a mid-stream CLEAR it needs one more byte,
    # without which Go's reader would fail with ErrUnexpectedEOF.
    def crosses_after_reset(codes):
        widths = go_writer_widths(codes)
        return codes.count(CLEAR) == 2 and widths[-1][1] == 10 and widths[-2][1] == 9

    n = _find_length(RANDOM_4K, 4000, 4800, crosses_after_reset)
    data = RANDOM_4K[:n]
    codes = reference_codes(data)
    narrow_eof = pack(go_writer_widths(codes)[:-1] + [(EOF, 9)])
    assert reference_stream(data) != narrow_eof
    assert compress(data) == reference_stream(data)
    assert decompress(compress(data)) == data


@pytest.mark.parametrize(
    ("data", "min_resets"),
    [
        (RANDOM_4K * 4, 4),  # mostly literal codes
        (bytes(range(256)) * 300, 2),  # long matches, widths up to 12 bits
        (bytes(random.Random(7).choices(b"ab", k=200_000)), 2),  # small alphabet
        (b"\x00" * 200_000, 0),  # KwKwK codes throughout, very long entries
    ],
    ids=["random", "cyclic", "two-letters", "zeros"],
)
def test_matches_reference_across_table_resets(data, min_resets):
    codes = reference_codes(data)
    assert codes.count(CLEAR) - 1 >= min_resets
    stream = compress(data)
    assert stream == pack(go_writer_widths(codes))
    assert decompress(stream) == data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.binary(max_size=3000)
    | st.lists(st.sampled_from([b"ab", b"abc", b"\x00", b"xyz!"]), max_size=2500).map(b"".join)
)
def test_property_matches_reference_encoder(data):
    assert compress(data) == reference_stream(data)


# -- streaming -------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    data=st.binary(max_size=20_000)
    | st.lists(st.sampled_from([b"abc", b"\x00" * 7, b"xy"]), max_size=4000).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
    dcuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=12),
)
def test_property_chunked_round_trip(data, cuts, dcuts):
    whole = compress(data)
    assert stream_compress(data, cuts) == whole
    assert stream_decompress(whole, dcuts) == data


def test_byte_by_byte_decoding_across_resets():
    data = RANDOM_4K * 2
    stream = compress(data)
    d = LZWDecompressor()
    out = b"".join(d.decompress(stream[i : i + 1]) for i in range(len(stream)))
    assert d.eof and out == data


def test_large_inputs_are_sliced_and_state_stays_bounded():
    data = random.Random(3).randbytes(300_000) + b"\x00" * 300_000
    c = LZWCompressor()
    stream = c.compress(data)
    assert len(c._table) < 4096
    stream += c.flush()
    d = LZWDecompressor()
    assert d.decompress(stream) == data
    assert len(d._table) == 4096
    assert d.eof


def test_unused_data_after_eof_is_kept_and_ignored():
    d = LZWDecompressor()
    assert d.decompress(TOBE_STREAM + b"tail") == TOBE
    assert d.eof and d.unused_data == b"tail"
    assert d.decompress(b"more") == b""
    assert d.unused_data == b"tailmore"
    assert d.flush() == b""


def test_compress_after_flush_is_an_error():
    c = LZWCompressor()
    c.compress(b"x")
    c.flush()
    with pytest.raises(ValueError):
        c.compress(b"y")
    assert c.flush() == b""


def test_accepts_memoryview_and_bytearray():
    c = LZWCompressor()
    stream = c.compress(memoryview(TOBE)) + c.flush()
    assert stream == TOBE_STREAM
    assert LZWDecompressor().decompress(bytearray(TOBE_STREAM)) == TOBE


# -- corrupt input ---------------------------------------------------------------------------


def test_code_beyond_next_free_code_is_rejected():
    # Right after CLEAR the next free code is 258 only once a literal was read.
    bad = pack([(CLEAR, 9), (300, 9), (EOF, 9)])
    d = LZWDecompressor()
    with pytest.raises(LZWError, match="invalid code 300"):
        d.decompress(bad)
    with pytest.raises(LZWError):
        d.decompress(b"\x00")
    with pytest.raises(LZWError):
        d.flush()


def test_missing_eof_is_rejected():
    stream = compress(RANDOM_4K)
    with pytest.raises(LZWError):
        decompress(stream[:-2])


def test_kwkwk_code_right_after_clear_is_rejected():
    # code == hi needs a previous code; after CLEAR hi is EOF, so 258 is out of range.
    with pytest.raises(LZWError):
        decompress(pack([(CLEAR, 9), (258, 9)]))


# -- streams Go can read but does not write ---------------------------------------------------


def frozen_table_stream(data: bytes) -> bytes:
    """An encoder that never sends CLEAR: Go's reader keeps decoding with a full table."""
    table = {bytes([i]): i for i in range(256)}
    next_code = 258
    out: list[int] = []
    match = data[:1]
    for i in range(1, len(data)):
        candidate = match + data[i : i + 1]
        if candidate in table:
            match = candidate
            continue
        out.append(table[match])
        if next_code < 4096:
            table[candidate] = next_code
            next_code += 1
        match = data[i : i + 1]
    out.append(table[match])
    # Reader widths: the k-th code is read while hi == min(256 + k, 4095).
    sized = [(code, min(256 + k, 4095).bit_length()) for k, code in enumerate(out, start=1)]
    sized.append((EOF, min(256 + len(out) + 1, 4095).bit_length()))
    return pack(sized)


def test_decodes_stream_that_never_clears():
    data = random.Random(11).randbytes(12_000) + bytes(range(256)) * 20
    stream = frozen_table_stream(data)
    assert decompress(stream) == data
    assert stream_decompress(stream, [1, 777, 5000, 9001]) == data
