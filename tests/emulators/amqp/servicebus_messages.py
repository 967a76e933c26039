"""Translation between encoded AMQP messages and the Service Bus model's `StoredMessage`.

Incoming: a transfer payload (one message, or a batch in message-format 0x80013700) becomes
`StoredMessage`s whose `payload` is the client's bytes. Outgoing: the stored bytes get the
annotations, header and properties a real namespace adds (sequence number, enqueued time,
lock expiry, delivery count, dead-letter reason), everything else is passed on unchanged.
"""

from __future__ import annotations

import uuid
from typing import Any

from proton import Array, Data, symbol, timestamp

from .codec import (
    BATCH_MESSAGE_FORMAT,
    SECTION_APPLICATION_PROPERTIES,
    composite_value,
    encode_value,
    undescribed_array,
)
from .message import (
    batch_parts,
    decode_message,
    section_value,
    split_sections,
    with_annotations,
    with_header,
)
from .servicebus_model import Delivery, StoredMessage

SEQUENCE_NUMBER = symbol("x-opt-sequence-number")
ENQUEUED_TIME = symbol("x-opt-enqueued-time")
LOCKED_UNTIL = symbol("x-opt-locked-until")
LOCK_TOKEN = symbol("x-opt-lock-token")
DEAD_LETTER_SOURCE = symbol("x-opt-deadletter-source")
DEAD_LETTER_REASON = "DeadLetterReason"
DEAD_LETTER_DESCRIPTION = "DeadLetterErrorDescription"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _ms(epoch_seconds: float) -> timestamp:
    return timestamp(round(epoch_seconds * 1000))


def parse_message(payload: bytes) -> StoredMessage:
    """One encoded message as the model sees it (the bytes are kept as the payload)."""
    decoded = decode_message(payload)
    raw_properties: dict[Any, Any] = decoded.properties or {}
    properties = {str(k): v for k, v in raw_properties.items()}
    return StoredMessage(
        payload=bytes(payload),
        message_id=_text(decoded.id),
        correlation_id=_text(decoded.correlation_id),
        subject=_text(decoded.subject),
        content_type=_text(decoded.content_type),
        to=_text(decoded.address),
        reply_to=_text(decoded.reply_to),
        session_id=_text(decoded.group_id),
        application_properties=properties,
    )


def parse_transfer(payload: bytes, message_format: int | None) -> list[StoredMessage]:
    """The messages carried by one transfer: a batch holds one encoded message per data
    section, anything else is a single message."""
    if message_format == BATCH_MESSAGE_FORMAT:
        return [parse_message(part) for part in batch_parts(payload)]
    return [parse_message(payload)]


def with_application_properties(payload: bytes, extra: dict[str, Any]) -> bytes:
    """Return payload with `extra` merged into its application properties section."""
    sections = split_sections(payload)
    merged: dict[Any, Any] = {}
    index = None
    for i, (code, raw) in enumerate(sections):
        if code == SECTION_APPLICATION_PROPERTIES:
            merged = dict(section_value(raw) or {})
            index = i
    merged.update(extra)
    new_raw = encode_value(composite_value(SECTION_APPLICATION_PROPERTIES, merged))
    if index is not None:
        sections[index] = (SECTION_APPLICATION_PROPERTIES, new_raw)
    else:
        # Application properties follow header, annotations and properties (0x70-0x73).
        position = sum(1 for code, _ in sections if code < SECTION_APPLICATION_PROPERTIES)
        sections.insert(position, (SECTION_APPLICATION_PROPERTIES, new_raw))
    return b"".join(raw for _, raw in sections)


def render(message: StoredMessage, *, locked_until: float | None = None) -> bytes:
    """The bytes a receiver gets for `message` (peek-lock deliveries carry `locked_until`)."""
    annotations: dict[Any, Any] = {
        SEQUENCE_NUMBER: message.sequence_number,
        ENQUEUED_TIME: _ms(message.enqueued_time),
    }
    if locked_until is not None:
        annotations[LOCKED_UNTIL] = _ms(locked_until)
    if message.dead_letter_source is not None:
        annotations[DEAD_LETTER_SOURCE] = message.dead_letter_source
    payload = bytes(message.payload)
    if message.dead_letter_source is not None:
        extra = {}
        if message.dead_letter_reason is not None:
            extra[DEAD_LETTER_REASON] = message.dead_letter_reason
        if message.dead_letter_description is not None:
            extra[DEAD_LETTER_DESCRIPTION] = message.dead_letter_description
        if extra:
            payload = with_application_properties(payload, extra)
    payload = with_annotations(payload, annotations)
    return with_header(payload, delivery_count=message.delivery_count)


def render_delivery(delivery: Delivery) -> bytes:
    return render(delivery.message, locked_until=delivery.locked_until)


def delivery_tag(delivery: Delivery) -> bytes:
    """The 16-byte delivery tag: the SDK reads the lock token as UUID(bytes_le=tag)."""
    token = delivery.lock_token if delivery.lock_token is not None else uuid.uuid4()
    return token.bytes_le


def lock_token_of(tag: bytes) -> uuid.UUID:
    return uuid.UUID(bytes_le=bytes(tag))


def timestamp_array(epoch_seconds: list[float]) -> Array:
    """An AMQP array of timestamps (what renew-lock answers with)."""
    return undescribed_array(Data.TIMESTAMP, *[_ms(s) for s in epoch_seconds])
