"""Exact, compact text encodings of detector counters for snapshots."""

from __future__ import annotations

import base64
import re
import struct
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import numpy as np

# base64.b85encode's alphabet, and the weights of a 4-byte word's five digits.
_ALPHABET = np.frombuffer(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~",
    dtype=np.uint8,
)
_WEIGHTS = np.array([85**4, 85**3, 85**2, 85, 1], dtype=np.uint64)
_CHARACTERS = _ALPHABET.tobytes()
# Below this many bytes a word at a time (compiled) is quicker than numpy's fixed cost.
_NUMPY_FROM = 64


def b85(data: bytes) -> str:
    """``base64.b85encode(data)`` as text, the same characters: base64's encoder is pure Python
    (70 µs for an ADWIN state here, most of a snapshot's time; ~5 µs for the many short
    counters); whole words at once in numpy take a third of that, and short data a word at a
    time in this compiled module a tenth."""
    if len(data) < _NUMPY_FROM:
        return _b85_words(data)
    pad = -len(data) % 4
    words = np.frombuffer(data + bytes(pad), dtype=">u4").astype(np.uint64)
    text: bytes = _ALPHABET[(words[:, None] // _WEIGHTS) % 85].tobytes()
    return (text[: len(text) - pad] if pad else text).decode("ascii")


def _b85_words(data: bytes) -> str:
    pad = -len(data) % 4
    padded = data + bytes(pad)
    characters = _CHARACTERS
    out: list[int] = []
    for word in struct.unpack(f">{len(padded) // 4}I", padded):
        value: int = word
        digit4 = value % 85
        value //= 85
        digit3 = value % 85
        value //= 85
        digit2 = value % 85
        value //= 85
        digit1 = value % 85
        value //= 85
        out += (
            characters[value],
            characters[digit1],
            characters[digit2],
            characters[digit3],
            characters[digit4],
        )
    text = bytes(out)
    return (text[: len(text) - pad] if pad else text).decode("ascii")


def pack_varints(values: list[int]) -> str:
    """Non-negative integers as LEB128 varints (7 bits a byte), base85. Counters of windows
    and buckets are mostly small: this is about half the JSON of the same list, for any size
    of integer."""
    out = bytearray()
    for value in values:
        if value < 0:
            raise ValueError("only non-negative counts can be packed")
        while value >= 0x80:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return b85(bytes(out))


def unpack_varints(text: str) -> list[int]:
    values: list[int] = []
    value = shift = 0
    for byte in base64.b85decode(text):
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
        else:
            values.append(value)
            value = shift = 0
    if shift:
        raise ValueError("truncated varint")
    return values


_HEX_ID = re.compile(r"[0-9a-f]{32}")
_ID_BYTES = 16


def pack_ids(ids: Iterable[str]) -> str | list[str]:
    """Ids of 32 lowercase hex digits (W3C trace ids, breach ids) as their 16 bytes, base85
    in one string: 20 characters an id instead of 34 in a JSON list. Any other id keeps the
    whole list as text, so unpacking always gives back exactly what was packed."""
    ids = list(ids)
    if not all(_HEX_ID.fullmatch(i) for i in ids):
        return ids
    return b85(b"".join(bytes.fromhex(i) for i in ids))


def unpack_ids(packed: str | list[str]) -> list[str]:
    if isinstance(packed, list):
        return [str(i) for i in packed]
    raw = base64.b85decode(packed)
    if len(raw) % _ID_BYTES:
        raise ValueError("packed ids are not whole 16-byte ids")
    return [raw[i : i + _ID_BYTES].hex() for i in range(0, len(raw), _ID_BYTES)]


def pack_floats(values: list[float]) -> str:
    """Floats as their 8 IEEE bytes, base85: 10 characters each, exact, where JSON needs up
    to 18 digits for a mean or a deviation."""
    return b85(struct.pack(f"<{len(values)}d", *values))


def unpack_floats(text: str) -> list[float]:
    raw = base64.b85decode(text)
    if len(raw) % 8:
        raise ValueError("packed floats are not whole 8-byte floats")
    return list(struct.unpack(f"<{len(raw) // 8}d", raw))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(when: datetime) -> int:
    """Microseconds since the epoch: exact in a double (snapshots pack times this way)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: float) -> datetime:
    """The UTC time ``micros`` gave ``value`` for."""
    return _EPOCH + timedelta(microseconds=int(value))
