"""What the Cosmos store writes (store/cosmos_items.py): items, event times, ids, window days."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from schemas import AppDirectory, TelemetryDocument, TelemetryEvent
from store.cosmos_items import (
    cosmos_id,
    document_from_item,
    epoch_us,
    event_fields,
    record_id,
    snapshot_from_item,
    state_item,
    telemetry_item,
)
from store.ports import StateSnapshot, window_days
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from tests.unit.store.event_id_conflicts import document as conflict_document
from tests.unit.store.event_id_conflicts import reverse, stored_raw

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def document(timestamp: str) -> TelemetryDocument:
    event = TelemetryEvent.model_validate(
        {"app_id": "a", "timestamp": timestamp, "trace_id": "t"}, context={"now": NOW}
    )
    position = ReceivedEvent(b"{}", "0", 1, NOW, "1")
    return Enricher(AppDirectory(), b"k", "local").document(event, position, 0, NOW, False)


def test_telemetry_item_is_the_document_json_plus_its_event_time() -> None:
    whole = document("2026-11-22T10:00:00Z")
    fraction = document("2026-11-22T10:00:00.5Z")
    # The reason for the number: as text, the earlier instant sorts after the later one.
    assert (
        orjson.loads(whole.json_bytes())["timestamp"]
        > orjson.loads(fraction.json_bytes())["timestamp"]
    )

    item = telemetry_item(whole)
    assert item.pop("event_time_us") < telemetry_item(fraction)["event_time_us"]
    assert item == orjson.loads(whole.json_bytes())
    assert TelemetryDocument.model_validate(telemetry_item(whole)) == whole


def test_integers_beyond_doubles_are_read_back_as_the_same_integers() -> None:
    """Cosmos DB's numbers are doubles: such integers are written as their digits and read
    back from them, token counts too (the model takes no strings for them)."""
    doc = conflict_document(
        1, tokens={"input": 2**64 - 1, "output": 2**53 + 1}, metadata={"big": 2**63 - 1}
    )
    item = orjson.loads(orjson.dumps(telemetry_item(doc)))
    assert item["tokens"] == {"input": str(2**64 - 1), "output": str(2**53 + 1)}
    assert item["metadata"]["big"] == str(2**63 - 1)
    read = document_from_item(item)
    assert read == doc
    assert read.tokens is not None and type(read.tokens.input) is int


def test_epoch_us_is_exact_and_zone_independent() -> None:
    instant = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=UTC)
    assert epoch_us(instant) == 1_795_341_600_123_456
    assert epoch_us(instant.astimezone(timezone(timedelta(hours=-7)))) == epoch_us(instant)


def test_state_item_round_trips_64_bit_sequences_and_binary_blobs() -> None:
    snapshot = StateSnapshot("$Default", "7", 2**63 - 1, bytes(range(256)))
    item = state_item(snapshot)
    assert (item["id"], item["pk"]) == ("7", "$Default")
    assert snapshot_from_item(orjson.loads(orjson.dumps(item))) == snapshot


def test_window_days_are_the_utc_days_touched() -> None:
    midnight = datetime(2026, 11, 21, tzinfo=UTC)
    assert window_days(midnight, midnight + timedelta(days=1)) == [date(2026, 11, 21)]
    assert window_days(midnight - timedelta(seconds=1), midnight + timedelta(seconds=1)) == [
        date(2026, 11, 20),
        date(2026, 11, 21),
    ]
    # 23:00 at UTC-2 is 01:00 UTC the next day.
    minus_two = timezone(timedelta(hours=-2))
    start = datetime(2026, 11, 20, 23, 0, tzinfo=minus_two)
    assert window_days(start, start + timedelta(hours=1)) == [date(2026, 11, 21)]


# What azure-cosmos 4.17.1 accepts as an id (azure/cosmos/_base.py, _validate_resource).
SDK_VALID_ID = re.compile(r"^[^/\\#?\t\r\n]*$")


@given(st.text())
def test_cosmos_ids_round_trip_and_are_valid(value: str) -> None:
    escaped = cosmos_id(value)
    assert record_id(escaped) == value
    assert SDK_VALID_ID.match(escaped)
    assert "%" not in escaped
    assert not escaped.endswith((" ", "\n"))


@given(st.text(alphabet=st.characters(blacklist_characters="/\\#?\t\r\n%~")))
def test_ids_without_unsafe_characters_are_unchanged(value: str) -> None:
    if not value.endswith(" "):
        assert cosmos_id(value) == value


def test_awkward_ids_are_escaped_readably() -> None:
    assert cosmos_id("order/42?x#1") == "order~2F42~3Fx~231"
    assert cosmos_id("~7E") == "~7E7E"
    assert record_id("~7E7E") == "~7E"


def test_an_events_user_pseudonyms_do_not_make_it_another_event() -> None:
    """Made with a key, they differ after a change of key, or from a raw metadata.user_id an
    older version stored: the same event all the same. Whether it has them is the event's."""
    fields: dict[str, Any] = {"event_id": "e-1", "user_id": "u-1", "metadata": {"user_id": 42}}
    stored = conflict_document(1, **fields)
    for same in (
        conflict_document(2, key=b"another key", **fields),
        stored_raw(stored, 42),
    ):
        assert event_fields(telemetry_item(same)) == event_fields(telemetry_item(stored))
    for other in (
        conflict_document(2, **{**fields, "user_id": None}),
        conflict_document(2, **{**fields, "metadata": {}}),
        conflict_document(2, **{**fields, "metadata": {"k": "w", "user_id": 42}}),
    ):
        assert event_fields(telemetry_item(other)) != event_fields(telemetry_item(stored))


def test_an_events_key_order_does_not_make_it_another_event_a_boolean_does() -> None:
    """JSON objects are unordered; ``true`` is not ``1`` (Python has True == 1), while ``1.0``
    is ``1`` in Cosmos DB, whose numbers are doubles (it reads 1.0 back as 1)."""
    tags: dict[str, Any] = {"a": "x", "n": 1, "flag": False, "user_id": 42}
    scores = {"relevance": 0.9, "toxicity": 0.1}
    stored = telemetry_item(conflict_document(1, event_id="e-1", metadata=tags, scores=scores))
    reordered = conflict_document(2, event_id="e-1", metadata=reverse(tags), scores=reverse(scores))
    as_read_back = {**stored, "metadata": {**stored["metadata"], "n": 1.0}}
    for same in (telemetry_item(reordered), as_read_back):
        assert event_fields(same) == event_fields(stored)
    for value in (True, "1"):
        other = conflict_document(2, event_id="e-1", metadata={**tags, "n": value}, scores=scores)
        assert event_fields(telemetry_item(other)) != event_fields(stored)
    flag = conflict_document(2, event_id="e-1", metadata={**tags, "flag": 0}, scores=scores)
    assert event_fields(telemetry_item(flag)) != event_fields(stored)


def test_a_big_integer_kept_as_its_digits_is_not_the_event_that_sent_the_digits() -> None:
    """Beyond a double's exact range a metadata integer is written as its decimal string: the
    same event compares equal, the digits sent as a string do not (as in the SQLite store)."""
    big = 12345678901234567890
    stored = telemetry_item(conflict_document(1, event_id="e-1", metadata={"n": big}))
    assert stored["metadata"]["n"] == str(big)
    same = telemetry_item(conflict_document(2, event_id="e-1", metadata={"n": big}))
    digits = telemetry_item(conflict_document(2, event_id="e-1", metadata={"n": str(big)}))
    assert event_fields(same) == event_fields(stored)
    assert event_fields(digits) != event_fields(stored)
