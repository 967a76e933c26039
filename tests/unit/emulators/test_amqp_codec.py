"""Unit tests of the AMQP test broker's framing, message rewriting and Event Hubs helpers (no
sockets). Frames are checked against pyamqp's own decoder, the reader that matters."""

from __future__ import annotations

import time

import pytest
from azure.eventhub._pyamqp._decode import decode_frame, decode_payload
from proton import Message, symbol, uint

from tests.emulators.amqp import codec
from tests.emulators.amqp.broker import Broker, LinkRefused, normalise_address
from tests.emulators.amqp.eventhubs import EventHubs, parse_selector, partition_for_key
from tests.emulators.amqp.message import (
    annotations_of,
    batch_parts,
    decode_message,
    encode_message,
    split_sections,
    with_annotations,
    with_delivery_annotations,
    with_header,
)


@pytest.mark.parametrize(
    ("code", "fields"),
    [
        (codec.OPEN, ["container", None, uint(65536)]),
        (codec.BEGIN, [None, uint(0)]),
        (codec.ATTACH, ["link", uint(0), True]),
        (codec.FLOW, [uint(0)]),
        (codec.TRANSFER, [uint(0), uint(1), b"t" * 16]),
        (codec.DISPOSITION, [True, uint(0)]),
        (codec.DETACH, [uint(0), True]),
        (codec.END, []),
        (codec.CLOSE, []),
    ],
)
def test_performatives_are_written_at_full_length(code: int, fields: list[object]) -> None:
    frame = codec.encode_frame(codec.FRAME_AMQP, 0, codec.composite(code, *fields))
    decoded_code, decoded = decode_frame(memoryview(frame[8:]))
    assert decoded_code == code
    expected = codec.FIELD_COUNTS[code] + (1 if code == codec.TRANSFER else 0)  # + payload
    assert len(decoded) == expected


def test_composite_rejects_too_many_fields() -> None:
    with pytest.raises(ValueError, match="takes 3 fields"):
        codec.composite(codec.DETACH, 1, 2, 3, 4)


def test_frame_round_trip_keeps_payload_after_performative() -> None:
    performative = codec.composite(codec.TRANSFER, uint(3), uint(7), b"tag", uint(0x80013700))
    frame = codec.encode_frame(codec.FRAME_AMQP, 2, performative, b"payload-bytes")
    decoded = codec.decode_frame_body(frame[5], 2, frame[8:])
    assert decoded.code == codec.TRANSFER
    assert decoded.fields[:4] == [3, 7, b"tag", 0x80013700]
    assert len(decoded.fields) == 11
    assert decoded.payload == b"payload-bytes"


def _message(body: bytes, **annotations: object) -> bytes:
    message = Message(body=body, inferred=True)
    message.properties = {"kind": "test"}
    if annotations:
        message.annotations = {symbol(k): v for k, v in annotations.items()}
    return encode_message(message)


def test_batch_parts_are_the_inner_messages() -> None:
    inner = [_message(b"one"), _message(b"two", **{"x-opt-partition-key": "k"})]
    envelope = b"".join(
        codec.encode_value(codec.composite_value(codec.SECTION_DATA, part)) for part in inner
    )
    assert batch_parts(envelope) == inner
    assert annotations_of(batch_parts(envelope)[1]) == {"x-opt-partition-key": "k"}


def test_with_annotations_merges_and_keeps_other_sections_byte_for_byte() -> None:
    original = _message(b"body", existing="kept")
    rewritten = with_annotations(original, {symbol("x-opt-offset"): "42"})
    before = dict(split_sections(original))
    after = dict(split_sections(rewritten))
    assert (
        after[codec.SECTION_APPLICATION_PROPERTIES] == before[codec.SECTION_APPLICATION_PROPERTIES]
    )
    assert after[codec.SECTION_DATA] == before[codec.SECTION_DATA]
    assert annotations_of(rewritten) == {"existing": "kept", "x-opt-offset": "42"}
    # pyamqp (the SDK's decoder) reads the rewritten message.
    decoded = decode_payload(memoryview(rewritten))
    assert decoded.message_annotations[b"x-opt-offset"] == b"42"
    assert decoded.data == [b"body"]


def test_delivery_annotations_and_header_go_in_amqp_section_order() -> None:
    plain = encode_message(Message(body="v"))
    stripped = b"".join(raw for code, raw in split_sections(plain) if code != codec.SECTION_HEADER)
    rewritten = with_header(
        with_delivery_annotations(stripped, {symbol("last_enqueued_offset"): "9"}),
        delivery_count=3,
    )
    codes = [code for code, _ in split_sections(rewritten)]
    assert codes == sorted(codes)
    assert codes[:2] == [codec.SECTION_HEADER, codec.SECTION_DELIVERY_ANNOTATIONS]
    assert decode_message(rewritten).delivery_count == 3
    decoded = decode_payload(memoryview(rewritten))
    assert decoded.header.delivery_count == 3
    assert decoded.delivery_annotations[b"last_enqueued_offset"] == b"9"


@pytest.mark.parametrize(
    ("selector", "field", "value", "inclusive"),
    [
        ("amqp.annotation.x-opt-offset > '-1'", "offset", "-1", False),
        ("amqp.annotation.x-opt-offset >= '120'", "offset", "120", True),
        ("amqp.annotation.x-opt-offset > '@latest'", "offset", "@latest", False),
        ("amqp.annotation.x-opt-sequence-number >= '7'", "sequence", "7", True),
        (
            "amqp.annotation.x-opt-enqueued-time > '1763777741024'",
            "enqueued",
            "1763777741024",
            False,
        ),
    ],
)
def test_parse_selector(selector: str, field: str, value: str, inclusive: bool) -> None:
    position = parse_selector(selector)
    assert (position.field, position.value, position.inclusive) == (field, value, inclusive)


def test_parse_selector_refuses_unknown_filters() -> None:
    with pytest.raises(LinkRefused) as caught:
        parse_selector("amqp.annotation.x-opt-something = '1'")
    assert caught.value.condition == "amqp:invalid-field"


def test_partition_for_key_is_stable_across_runs() -> None:
    # Fixed expectations: a change of hash would move keys between partitions silently.
    assert [partition_for_key(k, 4) for k in ("a", "app-1", "tenant-42")] == [2, 3, 0]


@pytest.mark.parametrize(
    ("address", "path"),
    [
        (
            "amqps://localhost:5672/hub/ConsumerGroups/$Default/Partitions/0",
            "hub/ConsumerGroups/$Default/Partitions/0",
        ),
        ("amqp://127.0.0.1/queue", "queue"),
        ("$management", "$management"),
        ("/topic/Subscriptions/s1/", "topic/Subscriptions/s1"),
        (None, ""),
    ],
)
def test_normalise_address(address: str | None, path: str) -> None:
    assert normalise_address(address) == path


def test_retention_by_count_and_by_age() -> None:
    # The admin API runs inline when the broker is not serving (no loop to hop to).
    hubs = EventHubs.install(Broker())
    hubs.create_hub("kept", 1, max_events=2)
    stored = [hubs.append("kept", "0", _message(f"e{i}".encode())) for i in range(4)]
    assert [e.sequence_number for e in hubs.events("kept", "0")] == [2, 3]
    assert stored[1].offset > stored[0].offset  # offsets grow by stored size, not by one
    assert stored[1].offset - stored[0].offset == len(stored[0].message)

    hubs.set_retention("kept", max_age_seconds=0.05)
    deadline = time.monotonic() + 5
    while hubs.events("kept", "0"):
        assert time.monotonic() < deadline, "events older than the retention age were kept"
        time.sleep(0.01)
    # Sequence numbers continue after retention dropped everything.
    assert hubs.append("kept", "0", _message(b"later")).sequence_number == 4


@pytest.mark.parametrize(
    ("delivery_id", "tag", "message_format", "settled", "more"),
    [
        (5, b"\x01" * 16, 0, True, False),
        (None, None, None, False, True),
        (7, b"x" * 300, 2, False, False),
    ],
)
def test_hand_encoded_transfer_matches_the_generic_encoder(
    delivery_id: int | None,
    tag: bytes | None,
    message_format: int | None,
    settled: bool,
    more: bool,
) -> None:
    fast = codec.encode_transfer(3, delivery_id, tag, message_format, settled, more)
    generic = codec.encode_value(
        codec.composite(
            codec.TRANSFER,
            uint(3),
            None if delivery_id is None else uint(delivery_id),
            tag,
            None if message_format is None else uint(message_format),
            settled,
            more,
            None,
            None,
            False,
            False,
            False,
        )
    )
    # Same values; integer widths may differ (proton picks the smallest encoding).
    assert codec.decode_value(fast)[0] == codec.decode_value(generic)[0]
    assert codec.skip_value(fast, 0) == len(fast)
    _, fields = decode_frame(memoryview(fast + b"payload"))
    assert fields[:6] == [3, delivery_id, tag, message_format, settled, more]
    assert fields[-1] == b"payload"


def test_skip_value_steps_over_every_section_kind() -> None:
    message = Message(body={"k": [1, 2.5, "s"]}, id="m1", properties={"p": True})
    message.annotations = {symbol("a"): 1}
    encoded = encode_message(message)
    codes = [code for code, _ in split_sections(encoded)]
    assert codes == [
        codec.SECTION_HEADER,
        codec.SECTION_MESSAGE_ANNOTATIONS,
        codec.SECTION_PROPERTIES,
        codec.SECTION_APPLICATION_PROPERTIES,
        codec.SECTION_AMQP_VALUE,
    ]
    assert b"".join(raw for _, raw in split_sections(encoded)) == encoded
