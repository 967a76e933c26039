"""Helpers to read and rewrite encoded AMQP messages section by section.

Entities store messages as the bytes the client sent and only rewrite the sections they own
(message annotations, header), so everything else reaches consumers byte for byte.
"""

from __future__ import annotations

from typing import Any

from proton import Message

from .codec import (
    SECTION_DATA,
    SECTION_DELIVERY_ANNOTATIONS,
    SECTION_HEADER,
    SECTION_MESSAGE_ANNOTATIONS,
    FrameError,
    composite_value,
    decode_value,
    encode_value,
    skip_value,
)

Section = tuple[int, bytes]


def split_sections(payload: bytes) -> list[Section]:
    """Split an encoded message into (descriptor code, raw bytes) per section."""
    sections: list[Section] = []
    view = memoryview(payload)
    position = 0
    while position < len(view):
        # A section is a described value: 0x00, a ulong descriptor, then the value.
        if view[position] != 0x00:
            raise FrameError(f"message section does not start with a descriptor at {position}")
        end = skip_value(view, position)
        if view[position + 1] == 0x53:  # smallulong, what every client writes
            descriptor = view[position + 2]
        else:
            value, _ = decode_value(bytes(view[position + 1 : skip_value(view, position + 1)]))
            descriptor = int(value)
        sections.append((descriptor, bytes(view[position:end])))
        position = end
    return sections


def section_value(raw: bytes) -> Any:
    """The decoded value inside one raw section."""
    value, _ = decode_value(raw)
    return value.value


def batch_parts(payload: bytes) -> list[bytes]:
    """The inner messages of a batch (message-format 0x80013700): one per data section."""
    parts = []
    for code, raw in split_sections(payload):
        if code == SECTION_DATA:
            # 0x00 0x53 0x75, then vbin8 (1-byte length) or vbin32 (4-byte length).
            header = 3 + (2 if raw[3] == 0xA0 else 5)
            parts.append(raw[header:])
    return parts


def read_section(payload: bytes, code: int) -> Any:
    for found, raw in split_sections(payload):
        if found == code:
            return section_value(raw)
    return None


def annotations_of(payload: bytes) -> dict[Any, Any]:
    """The message annotations as a dict with str keys (symbols are str subclasses)."""
    value = read_section(payload, SECTION_MESSAGE_ANNOTATIONS)
    return dict(value) if isinstance(value, dict) else {}


def with_annotations(payload: bytes, extra: dict[Any, Any]) -> bytes:
    """Return payload with `extra` merged into its message annotations (keys must be symbols)."""
    return _with_map_section(payload, SECTION_MESSAGE_ANNOTATIONS, extra)


def with_delivery_annotations(payload: bytes, extra: dict[Any, Any]) -> bytes:
    """Return payload with `extra` merged into its delivery annotations (keys must be symbols)."""
    return _with_map_section(payload, SECTION_DELIVERY_ANNOTATIONS, extra)


def _with_map_section(payload: bytes, code: int, extra: dict[Any, Any]) -> bytes:
    sections = split_sections(payload)
    merged: dict[Any, Any] = {}
    index = None
    for i, (found, raw) in enumerate(sections):
        if found == code:
            merged = dict(section_value(raw) or {})
            index = i
    merged.update(extra)
    new_raw = encode_value(composite_value(code, merged))
    if index is not None:
        sections[index] = (code, new_raw)
    else:
        # Sections keep their AMQP order: header, delivery annotations, message annotations, ...
        position = sum(1 for found, _ in sections if found < code)
        sections.insert(position, (code, new_raw))
    return b"".join(raw for _, raw in sections)


def with_header(payload: bytes, **fields: Any) -> bytes:
    """Return payload with header fields set (durable, priority, ttl, first_acquirer,
    delivery_count); the header is written at full length (5 fields)."""
    from proton import ubyte, uint

    names = ["durable", "priority", "ttl", "first_acquirer", "delivery_count"]
    sections = split_sections(payload)
    current: list[Any] = [None] * 5
    rest = []
    for code, raw in sections:
        if code == SECTION_HEADER:
            value = list(section_value(raw) or [])
            current = value + [None] * (5 - len(value))
        else:
            rest.append((code, raw))
    for name, value in fields.items():
        i = names.index(name)
        if value is not None and name == "priority":
            current[i] = ubyte(value)
        elif value is not None and name in ("ttl", "delivery_count"):
            current[i] = uint(value)
        else:
            current[i] = value
    header = encode_value(composite_value(SECTION_HEADER, current))
    return header + b"".join(raw for _, raw in rest)


def decode_message(payload: bytes) -> Message:
    message = Message()
    message.decode(bytes(payload))
    return message


def encode_message(message: Message) -> bytes:
    return bytes(message.encode())
