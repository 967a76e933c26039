"""Request bodies sent compressed (``Content-Encoding``): gzip and deflate are read, within the
body size limit after decompression; any other encoding is refused, never read as if plain.

Telemetry exporters commonly compress their posts. Before this, a gzip body was taken for the
JSON itself and answered "not valid UTF-8", and a body labelled ``br`` but sent plain was
accepted.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

# Content-Encoding token -> zlib window bits: gzip's header and trailer (16 + 15); deflate as
# HTTP defines it (RFC 9110), zlib-wrapped (15); "identity" is no encoding.
_WBITS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
SUPPORTED = ("gzip", "deflate")
# Some clients send raw deflate data under "deflate" (no zlib header): read that too.
_RAW_DEFLATE = -15


@dataclass(frozen=True)
class Unsupported(Exception):
    """An encoding this server does not read (415)."""

    encoding: str

    def __str__(self) -> str:
        return (
            f"Content-Encoding {self.encoding!r} is not supported; send the body as it is, or "
            f"with {' or '.join(SUPPORTED)}"
        )


@dataclass(frozen=True)
class TooLarge(Exception):
    """The decompressed body passes the limit (413): reading stopped there."""

    limit: int

    def __str__(self) -> str:
        return f"request body exceeds {self.limit} bytes once decompressed"


@dataclass(frozen=True)
class Corrupt(Exception):
    """The body is not valid data of its encoding (400). ``readable``: what decompressed before
    the fault, which is what a quarantine record may keep (raw compressed bytes would hide
    user_id values from the scrubbing that every kept input gets)."""

    encoding: str
    reason: str
    readable: bytes = b""

    def __str__(self) -> str:
        return f"request body is not valid {self.encoding} data: {self.reason}"

    def kept(self, body: bytes) -> bytes:
        """What of ``body`` a quarantine record keeps: the part that decompressed, else the
        body itself unless it is compressed data (a gzip or zlib header): nothing then."""
        if self.readable:
            return self.readable
        return b"" if _compressed(body) else body


def _compressed(data: bytes) -> bool:
    gzip_magic = data[:2] == b"\x1f\x8b"
    zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
    return gzip_magic or zlib_header


def decoded_body(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """``body`` without its ``Content-Encoding`` (a comma-separated list, applied in order), at
    most ``limit`` bytes once decompressed."""
    if content_encoding is None:
        return body
    codings = [token.strip().lower() for token in content_encoding.split(",") if token.strip()]
    for coding in reversed(codings):
        if coding == "identity":
            continue
        wbits = _WBITS.get(coding)
        if wbits is None:
            raise Unsupported(coding)
        body = _inflate(body, coding, wbits, limit)
    return body


# Compressed input is fed in slices, so that what decompressed before a fault is known.
_SLICE = 16 * 1024


class _Fault(Exception):
    def __init__(self, reason: str, readable: bytes) -> None:
        super().__init__(reason)
        self.reason, self.readable = reason, readable


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    try:
        return _members(data, wbits, limit)
    except _Fault as fault:
        if wbits == _WBITS["deflate"] and not fault.readable:
            try:
                return _members(data, _RAW_DEFLATE, limit)
            except _Fault:
                pass
        raise Corrupt(coding, fault.reason, fault.readable) from None


def _members(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` decompressed: for gzip every member of it (the format allows several in a
    row), else its one stream."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        end = 0
        while end < len(data) and not inflater.eof:
            start, end = end, end + _SLICE
            try:
                # At most one byte past the limit is produced: enough to know it was passed
                # (and input left over then means the same).
                out += inflater.decompress(data[start:end], limit - len(out) + 1)
            except zlib.error as exc:
                raise _Fault(str(exc), bytes(out)) from None
            if len(out) > limit or inflater.unconsumed_tail:
                raise TooLarge(limit)
        if not inflater.eof:
            raise _Fault("the compressed data ends early", bytes(out))
        # What follows this member: the rest of its slice, and the slices not fed.
        data = inflater.unused_data + data[end:]
        if not data:
            return bytes(out)
        if wbits != _WBITS["gzip"]:
            raise _Fault("data after the end of the compressed stream", bytes(out))
