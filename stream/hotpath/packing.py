"""Exact, compact text encodings of detector counters for snapshots."""

from __future__ import annotations

import base64


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
    return base64.b85encode(bytes(out)).decode("ascii")


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
