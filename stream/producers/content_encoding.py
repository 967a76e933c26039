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
    """The body is not valid data of its encoding (400)."""

    encoding: str
    reason: str

    def __str__(self) -> str:
        return f"request body is not valid {self.encoding} data: {self.reason}"


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


def _inflate(data: bytes, coding: str, wbits: int, limit: int) -> bytes:
    try:
        return _members(data, wbits, limit)
    except zlib.error as exc:
        if wbits != _WBITS["deflate"]:
            raise Corrupt(coding, str(exc)) from None
        try:
            return _members(data, _RAW_DEFLATE, limit)
        except zlib.error:
            raise Corrupt(coding, str(exc)) from None


def _members(data: bytes, wbits: int, limit: int) -> bytes:
    """``data`` decompressed: for gzip every member of it (the format allows several in a
    row), else its one stream."""
    out: list[bytes] = []
    size = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        # At most one byte past the limit is produced: enough to know it was passed.
        chunk = inflater.decompress(data, limit - size + 1)
        size += len(chunk)
        if size > limit:
            raise TooLarge(limit)
        out.append(chunk)
        if not inflater.eof:
            raise zlib.error("the compressed data ends early")
        data = inflater.unused_data
        if not data:
            return b"".join(out)
        if wbits != _WBITS["gzip"]:
            raise zlib.error("data after the end of the compressed stream")
