"""LZW streams byte-compatible with Go's ``compress/lzw`` (LSB order, litWidth 8).

The Go backup-restore tool writes ``.Z`` snapshots with
``lzw.NewWriter(w, lzw.LSB, 8)``.  That is the GIF flavour of LZW, not the
unix compress(1) format: there is no header, codes start 9 bits wide and are
packed least-significant-bit first, code 256 is CLEAR and 257 is EOF, the
width grows up to 12 bits, and the writer sends CLEAR (then starts over)
whenever its next free code would be 4095.  Since Go 1.17 the writer also
starts every stream with CLEAR; older writers did not, and the reader accepts
both.

The compressor reproduces Go's writer code for code, so the same input gives
the same bytes.  The decompressor follows Go's reader, including its handling
of a full table (it stops adding entries instead of failing), so anything Go
can read we can read, and vice versa.

Pure Python, so the hot loops are shaped for CPython (the encoder only
collects codes and packs them afterwards through string tables), and both
directions work on bounded slices of the input so temporary structures stay
small whatever the caller passes in.
"""

from __future__ import annotations

__all__ = ["LZWCompressor", "LZWDecompressor", "LZWError", "compress", "decompress"]

_LIT_WIDTH = 8
_CLEAR = 1 << _LIT_WIDTH  # 256
_EOF = _CLEAR + 1  # 257
_MIN_WIDTH = _LIT_WIDTH + 1
_MAX_WIDTH = 12
_TABLE_SIZE = 1 << _MAX_WIDTH
# Go's writer resets as soon as its next code would be 4095, so it never
# emits 4095 itself; its reader still accepts it.
_WRITER_MAX_CODE = _TABLE_SIZE - 1

# Input is processed in slices of this size, bounding the encoder's code
# list and bit string and the number of pieces the decoder joins at once
# (joining millions of small bytes objects is disproportionately slow).
_ENC_SLICE = 1 << 16
_DEC_SLICE = 1 << 14

_LITERALS = tuple(bytes((i,)) for i in range(256))

# Bit strings of each code, least-significant bit first, per code width.
_BITS_LSB = {
    w: tuple(format(c, f"0{w}b")[::-1] for c in range(1 << w))
    for w in range(_MIN_WIDTH, _MAX_WIDTH + 1)
}


class LZWError(ValueError):
    """Corrupt or truncated LZW stream."""


def _as_bytes(data) -> bytes | bytearray:
    if isinstance(data, (bytes, bytearray)):
        return data
    return bytes(data)


class LZWCompressor:
    """Incremental encoder; call ``compress()`` any number of times, then ``flush()``.

    Between calls the state is the pending match, fewer than 8 unwritten
    bits and one table of < 4096 entries, so memory does not grow with the
    input.
    """

    __slots__ = ("_table", "_code8", "_hi8", "_limit8", "_width", "_pending", "_done")

    def __init__(self) -> None:
        # Codes are kept shifted left by 8 (``code8``) so the lookup key for
        # "current match + next byte" is a single OR in the hot loop.
        self._table: dict[int, int] = {}
        # -1 until the first byte: Go's savedCode == invalidCode.
        self._code8 = -1
        self._hi8 = _EOF << 8
        # hi8 reaching limit8 means either the width grows or (at 4095) the
        # table is full; one comparison in the hot loop covers both.
        self._limit8 = (1 << _MIN_WIDTH) << 8
        self._width = _MIN_WIDTH
        # Bits produced but not yet forming a whole byte, LSB first.
        self._pending = ""
        self._done = False

    def compress(self, data) -> bytes:
        if self._done:
            raise ValueError("LZWCompressor.compress() called after flush()")
        data = _as_bytes(data)
        if len(data) <= _ENC_SLICE:
            return self._compress_slice(data)
        return b"".join(
            self._compress_slice(data[i : i + _ENC_SLICE]) for i in range(0, len(data), _ENC_SLICE)
        )

    def _compress_slice(self, data) -> bytes:
        if not data:
            return b""
        table = self._table
        get = table.get
        hi8 = self._hi8
        limit8 = self._limit8
        width = self._width
        code8 = self._code8
        # Consecutive codes of equal width; a new run starts whenever the
        # width changes.
        runs: list[tuple[int, list[int]]] = []
        codes: list[int] = []
        runs.append((width, codes))
        emit = codes.append
        it = iter(data)
        if code8 < 0:
            emit(_CLEAR << 8)
            code8 = next(it) << 8
        for byte in it:
            key = code8 | byte
            nxt = get(key)
            if nxt is not None:
                code8 = nxt
                continue
            emit(code8)
            code8 = byte << 8
            hi8 += 256
            if hi8 < limit8:
                table[key] = hi8
                continue
            if hi8 == _WRITER_MAX_CODE << 8:
                # Out of codes: Go sends CLEAR at the current width and
                # starts over without recording this key.
                emit(_CLEAR << 8)
                table.clear()
                width = _MIN_WIDTH
                hi8 = _EOF << 8
                limit8 = (1 << width) << 8
            else:
                width += 1
                limit8 = min((1 << width) << 8, _WRITER_MAX_CODE << 8)
                table[key] = hi8
            codes = []
            runs.append((width, codes))
            emit = codes.append
        self._hi8 = hi8
        self._limit8 = limit8
        self._width = width
        self._code8 = code8
        return self._pack(runs)

    def _pack(self, runs: list[tuple[int, list[int]]]) -> bytes:
        parts = [self._pending]
        for width, codes in runs:
            if codes:
                strs = _BITS_LSB[width]
                parts.append("".join([strs[c >> 8] for c in codes]))
        bits = "".join(parts)
        whole = len(bits) >> 3
        self._pending = bits[whole << 3 :]
        if not whole:
            return b""
        return int(bits[: whole << 3][::-1], 2).to_bytes(whole, "little")

    def flush(self) -> bytes:
        """Finish the stream (pending match, EOF code, padding); no writes after."""
        if self._done:
            return b""
        self._done = True
        width = self._width
        run: list[int] = []
        runs = [(width, run)]
        if self._code8 >= 0:
            run.append(self._code8)
            # Go's Close runs incHi after the last code, which may grow the
            # width or, when out of codes, send CLEAR before EOF.
            hi8 = self._hi8 + 256
            if hi8 == (1 << width) << 8:
                width += 1
            elif hi8 == _WRITER_MAX_CODE << 8:
                run.append(_CLEAR << 8)
                width = _MIN_WIDTH
        else:
            run.append(_CLEAR << 8)
        runs.append((width, [_EOF << 8]))
        out = self._pack(runs)
        if self._pending:
            out += int(self._pending[::-1], 2).to_bytes(1, "little")
            self._pending = ""
        self._table.clear()
        return out


class LZWDecompressor:
    """Incremental decoder mirroring Go's ``lzw.Reader``.

    ``decompress()`` returns everything decodable from the bytes given so
    far.  Output is at most ~2700x the input (a 12-bit code expands to at
    most 4 KiB), so feed bounded chunks to bound the output.  Once the EOF
    code is seen ``eof`` is true and anything after it lands in
    ``unused_data`` (Go stops reading there too).  A stream that ends before
    its EOF code is only detectable by the caller: check ``eof`` or call
    ``flush()``.
    """

    __slots__ = (
        "_table",
        "_prev",
        "_hi",
        "_overflow",
        "_width",
        "_bits",
        "_nbits",
        "_error",
        "eof",
        "unused_data",
    )

    def __init__(self) -> None:
        # Every entry holds its whole expansion.  That is at most 4096
        # strings whose lengths sum to < 8 MiB even for degenerate input,
        # and lets the loop emit a ready-made bytes object per code.
        self._table: list[bytes] = list(_LITERALS) + [b""] * (_TABLE_SIZE - 256)
        # Expansion of the previous code, or None where Go's ``last`` is
        # decoderInvalidCode (stream start, after CLEAR, table full).
        self._prev: bytes | None = None
        self._hi = _EOF
        self._width = _MIN_WIDTH
        self._overflow = 1 << _MIN_WIDTH
        # Leftover bits (< one code) from the previous call.
        self._bits = 0
        self._nbits = 0
        self._error: str | None = None
        self.eof = False
        self.unused_data = b""

    @property
    def needs_input(self) -> bool:
        return not self.eof and self._error is None

    def decompress(self, data) -> bytes:
        if self._error is not None:
            raise LZWError(self._error)
        data = _as_bytes(data)
        if self.eof:
            self.unused_data += bytes(data)
            return b""
        if len(data) <= _DEC_SLICE:
            return self._decode_slice(data)
        out: list[bytes] = []
        for i in range(0, len(data), _DEC_SLICE):
            out.append(self._decode_slice(data[i : i + _DEC_SLICE]))
            if self.eof:
                self.unused_data += bytes(data[i + _DEC_SLICE :])
                break
        return b"".join(out)

    def _fail(self, message: str) -> LZWError:
        self._error = message
        return LZWError(message)

    def _decode_slice(self, data) -> bytes:
        out: list[bytes] = []
        table = self._table
        prev = self._prev
        hi = self._hi
        overflow = self._overflow
        width = self._width
        mask = (1 << width) - 1
        bits = self._bits
        nbits = self._nbits
        emit = out.append
        it = iter(data)
        # Codes are at least 9 bits wide, so a byte completes at most one.
        for byte in it:
            bits |= byte << nbits
            nbits += 8
            if nbits < width:
                continue
            code = bits & mask
            bits >>= width
            nbits -= width
            if code < _CLEAR:
                s = _LITERALS[code]
                if prev is not None:
                    table[hi] = prev + s
            elif code < hi:
                if code == _CLEAR:
                    width = _MIN_WIDTH
                    mask = (1 << width) - 1
                    overflow = 1 << width
                    hi = _EOF
                    prev = None
                    continue
                if code == _EOF:
                    self.eof = True
                    # Go ignores the rest of the final byte and what follows.
                    self.unused_data = bytes(it)
                    break
                s = table[code]
                if prev is not None:
                    table[hi] = prev + s[:1]
            elif code == hi:
                if code == _EOF:
                    # hi is EOF only at stream start or right after CLEAR.
                    self.eof = True
                    self.unused_data = bytes(it)
                    break
                if prev is None:
                    # Frozen table (see below): entry 4095 was defined before.
                    s = table[code]
                else:
                    # KwKwK: the code being defined by this very step.
                    s = prev + prev[:1]
                    table[hi] = s
            else:
                self._prev = prev
                raise self._fail(f"lzw: invalid code {code} (next free code {hi})")
            emit(s)
            prev = s
            hi += 1
            if hi >= overflow:
                if width == _MAX_WIDTH:
                    # Go: the table is full; keep decoding without adding
                    # entries until the writer sends CLEAR.
                    prev = None
                    hi -= 1
                else:
                    width += 1
                    mask = (1 << width) - 1
                    overflow <<= 1
        self._prev = prev
        self._hi = hi
        self._overflow = overflow
        self._width = width
        self._bits = bits
        self._nbits = nbits
        return b"".join(out)

    def flush(self) -> bytes:
        """Check the stream is complete; raises if the EOF code has not been seen."""
        if self._error is not None:
            raise LZWError(self._error)
        if not self.eof:
            raise LZWError("lzw: unexpected end of stream (no EOF code)")
        return b""


def compress(data) -> bytes:
    c = LZWCompressor()
    return c.compress(data) + c.flush()


def decompress(data) -> bytes:
    d = LZWDecompressor()
    out = d.decompress(data)
    d.flush()
    return out
