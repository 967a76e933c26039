"""TelemetryEvent: the valid/invalid matrix of the producer contract."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from schemas import Status, TelemetryEvent
from schemas.telemetry import MAX_METADATA_ENTRIES, MAX_TEXT_CHARS

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "app_id": "checkout-bot",
        "timestamp": "2026-11-22T11:59:00Z",
        "trace_id": "trace-1",
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def validate(data: dict[str, Any]) -> TelemetryEvent:
    return TelemetryEvent.model_validate(data, context={"now": NOW})


def error_types(data: dict[str, Any]) -> set[tuple[str, str]]:
    with pytest.raises(ValidationError) as info:
        validate(data)
    return {
        (".".join(str(p) for p in error["loc"]), error["type"]) for error in info.value.errors()
    }


def test_minimal_event_gets_defaults() -> None:
    parsed = validate(event())
    assert parsed.status is Status.OK
    assert parsed.scores == {}
    assert parsed.metadata == {}
    assert parsed.schema_version == 1
    assert parsed.timestamp == datetime(2026, 11, 22, 11, 59, tzinfo=UTC)


def test_full_event_round_trips_through_json() -> None:
    parsed = validate(
        event(
            event_id="e-1",
            span_id="s",
            model_id="gpt-4o",
            model_version="2024-08-06",
            input_text="hi",
            output_text="hello",
            latency_ms=12.5,
            status="error",
            error_type="Timeout",
            tokens={"input": 3, "output": 4},
            scores={"groundedness": 0.9},
            user_id="u-1",
            metadata={"channel": "web", "beta": True, "shard": 3, "weight": 0.5},
        )
    )
    again = TelemetryEvent.model_validate_json(parsed.model_dump_json(), context={"now": NOW})
    assert again == parsed


def test_timestamps_are_normalised_to_utc() -> None:
    parsed = validate(event(timestamp="2026-11-22T13:30:00+02:00"))
    assert parsed.timestamp == datetime(2026, 11, 22, 11, 30, tzinfo=UTC)
    assert parsed.timestamp.utcoffset() == timedelta(0)


def test_trace_id_may_come_from_metadata() -> None:
    parsed = validate(event(trace_id=..., metadata={"trace_id": "from-meta", "channel": "web"}))
    assert parsed.trace_id == "from-meta"


def test_top_level_trace_id_wins_over_metadata() -> None:
    assert validate(event(metadata={"trace_id": "meta"})).trace_id == "trace-1"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (event(app_id=...), ("app_id", "missing")),
        (event(app_id="has space"), ("app_id", "string_pattern_mismatch")),
        (event(app_id="x" * 129), ("app_id", "string_pattern_mismatch")),
        (event(timestamp=...), ("timestamp", "missing")),
        (event(timestamp="2026-11-22T11:59:00"), ("timestamp", "timezone_aware")),
        (event(timestamp="2026-11-22T13:00:00Z"), ("timestamp", "timestamp_in_future")),
        (event(timestamp="yesterday"), ("timestamp", "datetime_from_date_parsing")),
        (event(trace_id=...), ("trace_id", "missing")),
        (event(trace_id=""), ("trace_id", "string_too_short")),
        (event(latency_ms=-1), ("latency_ms", "greater_than_equal")),
        (event(latency_ms="fast"), ("latency_ms", "float_parsing")),
        (event(status="maybe"), ("status", "enum")),
        (event(tokens={"input": -1}), ("tokens.input", "greater_than_equal")),
        (event(tokens={"inputs": 1}), ("tokens.inputs", "extra_forbidden")),
        (event(output_text="x" * (MAX_TEXT_CHARS + 1)), ("output_text", "string_too_long")),
        (event(scores={"g": float("nan")}), ("scores.g", "finite_number")),
        (event(scores={"g": "high"}), ("scores.g", "float_parsing")),
        (
            event(metadata={f"k{i}": i for i in range(MAX_METADATA_ENTRIES + 1)}),
            ("metadata", "too_long"),
        ),
        (event(metadata={"k": "v" * 513}), ("metadata.k.constrained-str", "string_too_long")),
        (event(schema_version=2), ("schema_version", "literal_error")),
        # Values of another JSON type are refused, not converted (lax mode converted them).
        (event(timestamp=1765101600), ("timestamp", "datetime_type")),
        (event(timestamp=253402300799), ("timestamp", "datetime_type")),
        (event(timestamp="1765101600"), ("timestamp", "timestamp_not_rfc3339")),
        (event(timestamp="2026-11-22T11:59Z"), ("timestamp", "timestamp_not_rfc3339")),
        (event(latency_ms=True), ("latency_ms", "float_type")),
        (event(latency_ms="1_000"), ("latency_ms", "float_parsing")),
        (event(tokens={"input": "100"}), ("tokens.input", "int_parsing")),
        (event(tokens={"input": False}), ("tokens.input", "int_type")),
        (event(tokens={"output": 100.0}), ("tokens.output", "int_from_float")),
        (event(tokens={"input": 2.0**64}), ("tokens.input", "int_parsing_size")),
        (event(scores={"g": True}), ("scores.g", "float_type")),
        (event(scores={"g": "0.5"}), ("scores.g", "float_parsing")),
        (event(schema_version=True), ("schema_version", "literal_error")),
        (event(schema_version=1.0), ("schema_version", "literal_error")),
        (event(unexpected="field"), ("unexpected", "extra_forbidden")),
    ],
)
def test_invalid_events_name_the_field_and_reason(
    data: dict[str, Any], expected: tuple[str, str]
) -> None:
    assert expected in error_types(data)


def test_future_skew_comes_from_context() -> None:
    data = event(timestamp="2026-11-22T12:10:00Z")
    assert validate(data).timestamp.minute == 10  # within the default 15 minutes
    with pytest.raises(ValidationError, match=r"ahead of the clock"):
        TelemetryEvent.model_validate(
            data, context={"now": NOW, "max_future_skew": timedelta(minutes=5)}
        )


def test_json_schema_is_published_for_producers() -> None:
    schema = TelemetryEvent.model_json_schema()
    assert {"app_id", "timestamp", "trace_id"} <= set(schema["required"])
    assert schema["additionalProperties"] is False
    properties = schema["properties"]
    assert properties["timestamp"] == {
        "format": "date-time",
        "title": "Timestamp",
        "type": "string",
    }
    # JSON Schema's word for the bound ("ge" is pydantic's own, which no validator reads).
    assert {"minimum": 0, "type": "number"} in properties["latency_ms"]["anyOf"]
    assert schema["$defs"]["Tokens"]["properties"]["input"]["type"] == "integer"


def test_json_numbers_are_taken_as_numbers_of_the_fields_type() -> None:
    parsed = validate(event(latency_ms=5, scores={"g": 1}, tokens={"input": 2**64 - 1}))
    assert (parsed.latency_ms, type(parsed.latency_ms)) == (5.0, float)
    assert (parsed.scores["g"], type(parsed.scores["g"])) == (1.0, float)
    assert parsed.tokens is not None and parsed.tokens.input == 2**64 - 1


def test_python_callers_may_give_an_aware_datetime() -> None:
    when = datetime(2026, 11, 22, 13, 0, tzinfo=timezone(timedelta(hours=2)))
    assert validate(event(timestamp=when)).timestamp == datetime(2026, 11, 22, 11, tzinfo=UTC)
    assert ("timestamp", "timezone_aware") in error_types(
        event(timestamp=when.replace(tzinfo=None))
    )
