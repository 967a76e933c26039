"""stream.common_event against the model: whatever it accepts, the model accepts as an equal
event — the same values of the same types in the same order, the same JSON, the same canonical
form — and what it is unsure of it leaves to the model (None). Bodies of several events
(``common_events``) against the decoder's item-by-item reading of them."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from schemas import TelemetryEvent
from schemas.telemetry import DEFAULT_MAX_FUTURE_SKEW
from stream.common_event import _Event, common_event, common_events
from stream.decode import Decoder
from stream.enrich import canonical_json
from tests.unit.stream.event_bodies import bodies, number_texts, over_the_same_bodies

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATEST = NOW + DEFAULT_MAX_FUTURE_SKEW
CONTEXT = {"now": NOW, "max_future_skew": DEFAULT_MAX_FUTURE_SKEW}


def model_event(body: bytes) -> TelemetryEvent | None:
    try:
        return TelemetryEvent.model_validate(orjson.loads(body), context=CONTEXT)
    except (orjson.JSONDecodeError, ValidationError):
        return None


def assert_same(event: TelemetryEvent, model: TelemetryEvent | None) -> None:
    assert model is not None, "accepted what the model refuses"
    assert event == model
    assert list(event.__dict__) == list(model.__dict__)
    assert [type(v) for v in event.__dict__.values()] == [type(v) for v in model.__dict__.values()]
    assert [type(v) for v in event.metadata.values()] == [type(v) for v in model.metadata.values()]
    assert event.timestamp.tzinfo is model.timestamp.tzinfo is UTC
    assert event.model_dump_json() == model.model_dump_json()
    assert canonical_json(event) == canonical_json(model)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
def test_what_it_accepts_the_model_accepts_as_the_same_event(body: bytes) -> None:
    event = common_event(body, LATEST)
    if event is not None:
        assert_same(event, model_event(body))


def test_the_generated_bodies_reach_every_outcome() -> None:
    """Accepted here, left to the model which accepts, refused by both: the property above
    sees all three, or it proves little."""
    seen = {"accepted": 0, "left to the model, accepted": 0, "refused": 0}

    def tally(body: bytes) -> None:
        model = model_event(body)
        if common_event(body, LATEST) is not None:
            seen["accepted"] += 1
        elif model is not None:
            seen["left to the model, accepted"] += 1
        else:
            seen["refused"] += 1

    over_the_same_bodies(tally)
    assert all(count > 0 for count in seen.values()), seen


BASE = {"app_id": "app-1", "timestamp": "2026-11-22T11:00:00Z", "trace_id": "t"}


def body_of(**changes: object) -> bytes:
    event = {**BASE, **changes}
    return orjson.dumps({key: value for key, value in event.items() if value is not ...})


ACCEPTED = [
    body_of(),
    body_of(timestamp="2026-11-22T13:00:00.123456+02:00"),
    body_of(timestamp="2026-11-22T11:00:00.1-00:00"),
    body_of(timestamp="2026-11-22T12:15:00Z"),  # the skew's last instant
    body_of(trace_id=..., metadata={"trace_id": "from-metadata", "n": 1}),
    body_of(latency_ms=5, scores={"a": 1, "b": -0.0}, tokens={"input": 3}),
    body_of(metadata={"i": 2**63 - 1, "j": -(2**63), "f": 1.5, "b": True, "s": "x" * 512}),
    body_of(input_text="💥" * 32_768, status="error"),
    # A repeated key: the last value, in the first one's place, for both readers.
    b'{"app_id":"a","timestamp":"2026-11-22T11:00:00Z","trace_id":"t","app_id":"b"}',
    b' \n{"app_id":"a","timestamp":"2026-11-22T11:00:00Z","trace_id":"t"}\r\n',
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_common_bodies_are_read_here_as_the_model_reads_them(body: bytes) -> None:
    event = common_event(body, LATEST)
    assert event is not None
    assert_same(event, model_event(body))


# Values of another JSON type than the field's, or another form, that pydantic's lax mode
# would convert: refused by both readers (tests/unit/stream/test_decode_types.py has the
# decoder's codes for each).
WRONG_TYPES = {
    "unix seconds": body_of(timestamp=1_765_101_600),
    "unix seconds in a string": body_of(timestamp="1765101600"),
    "year 9999 in unix seconds": body_of(timestamp=253_402_300_799),
    "unix milliseconds": body_of(timestamp=1_765_101_600_000),
    "a timestamp without seconds": body_of(timestamp="2026-11-22T11:00Z"),
    "an offset without its colon": body_of(timestamp="2026-11-22T11:00:00+0000"),
    "latency true": body_of(latency_ms=True),
    "latency in a string": body_of(latency_ms="1_000"),
    "tokens in a string": body_of(tokens={"input": "100"}),
    "tokens false": body_of(tokens={"input": False}),
    "an integral float for tokens": body_of(tokens={"input": 3.0}),
    "a score true": body_of(scores={"a": True}),
    "a score in a string": body_of(scores={"a": "0.5"}),
    "schema_version true": body_of(schema_version=True),
    "schema_version 1.0": body_of(schema_version=1.0),
}

# Each differs from the model in a way this reader would get wrong or need care for.
LEFT_TO_THE_MODEL = {
    "seven fraction digits (msgspec rounds)": body_of(timestamp="2026-11-22T11:00:00.9999999Z"),
    "a space for the T": body_of(timestamp="2026-11-22 11:00:00Z"),
    "a lower-case t and z": body_of(timestamp="2026-11-22t11:00:00z"),
    "a metadata integer past 63 bits": body_of(metadata={"n": 2**63}),
    "tokens past 63 bits": body_of(tokens={"input": 2**64 - 1}),
    "an events envelope": orjson.dumps({"events": [BASE]}),
    "an array": orjson.dumps([BASE]),
}
REFUSED = {
    "a newline after app_id": body_of(app_id="app-1\n"),
    "non-ASCII digits in the timestamp": body_of(timestamp="2026-11-22T11:00:0٠Z"),
    "trace_id null beside metadata's": body_of(trace_id=None, metadata={"trace_id": "m"}),
    "metadata trace_id not a string": body_of(trace_id=..., metadata={"trace_id": 7}),
    "past the skew": body_of(timestamp="2026-11-22T12:15:00.000001Z"),
    "before 1970": body_of(timestamp="1969-12-31T23:59:59Z"),
    "before year 1 in UTC": body_of(timestamp="0001-01-01T00:00:00+05:00"),
    "a leap second": body_of(timestamp="2026-11-22T11:00:60Z"),
    "an offset of 60 minutes": body_of(timestamp="2026-11-22T11:00:00+00:60"),
    "text one character too long": body_of(output_text="💥" * 32_769),
    "an unknown field": body_of(region="eu"),
    "negative tokens": body_of(tokens={"output": -1}),
    "an unknown tokens field": body_of(tokens={"cached": 1}),
    "negative latency": body_of(latency_ms=-0.5),
    "an empty trace_id": body_of(trace_id=""),
    "app_id of 129 characters": body_of(app_id="a" * 129),
    "status in capitals": body_of(status="OK"),
    "an empty metadata key": body_of(metadata={"": 1}),
    "33 metadata entries": body_of(metadata={str(n): n for n in range(33)}),
    "65 scores": body_of(scores={str(n): 0.5 for n in range(65)}),
    "a metadata list": body_of(metadata={"l": [1]}),
    "a metadata value of 513 characters": body_of(metadata={"s": "x" * 513}),
    "a lone surrogate": b'{"app_id":"a","timestamp":"2026-11-22T11:00:00Z","trace_id":"\\ud800"}',
    "a number beyond a double": body_of(trace_id="t").replace(b"}", b',"latency_ms":1e400}'),
    **WRONG_TYPES,
}


@pytest.mark.parametrize("body", LEFT_TO_THE_MODEL.values(), ids=LEFT_TO_THE_MODEL.keys())
def test_bodies_the_model_takes_otherwise_are_left_to_it(body: bytes) -> None:
    assert common_event(body, LATEST) is None
    assert model_event(body) is not None or body.startswith((b"[", b'{"events"'))


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_bodies_the_model_refuses_are_not_accepted(body: bytes) -> None:
    assert model_event(body) is None
    assert common_event(body, LATEST) is None


# Per field, values a lax reading would convert to the field's type: a number or digits for the
# timestamp (whose unit is a guess), booleans and strings of digits for numbers, integral floats
# for integers; and timestamps in a form outside RFC 3339 that the model's date reader takes.
_zones = st.sampled_from(["Z", "+00:00", "-01:00", "+0000"])
_not_rfc3339 = st.one_of(
    _zones.map("2026-11-22T11:00{}".format),  # no seconds
    _zones.map("2026-11-22T11:00:00,5{}".format),  # a comma before the fraction
    st.builds(
        "2026-11-22T11:00:00{}{}".format,
        st.sampled_from(["", ".5"]),
        st.sampled_from(["+0000", "-0100", "+0530"]),  # an offset without its colon
    ),
)
WRONG_KIND = {
    "timestamp": st.one_of(
        st.integers(-(2**63), 2**64 - 1),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.integers(0, 10**13).map(str),
        st.floats(0, 1.8e9).map(str),
        _not_rfc3339,
    ),
    "latency_ms": st.booleans() | number_texts,
    "tokens": st.dictionaries(
        st.sampled_from(["input", "output"]),
        st.booleans() | number_texts | st.integers(0, 2**53).map(float),
        min_size=1,
    ),
    "scores": st.dictionaries(
        st.sampled_from(["g", "h"]), st.booleans() | number_texts, min_size=1
    ),
    "schema_version": st.sampled_from([True, False, 1.0, "1"]),
}
FULL = {"latency_ms": 5, "tokens": {"input": 3, "output": 4}, "scores": {"g": 0.5, "h": 1}}


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(WRONG_KIND)), data=st.data())
def test_values_a_lax_reading_would_convert_are_refused_by_both_readers(
    field: str, data: st.DataObject
) -> None:
    body = body_of(**{**FULL, field: data.draw(WRONG_KIND[field], label=field)})
    assert model_event(body) is None
    assert common_event(body, LATEST) is None
    assert common_events(b"[" + body + b"]", LATEST, MOST) is None


def test_the_latest_timestamp_is_the_callers() -> None:
    body = body_of(timestamp="2026-11-22T12:00:01Z")
    assert common_event(body, NOW) is None
    assert common_event(body, NOW + timedelta(seconds=1)) is not None


MOST = Decoder().limits.max_events_per_body


def model_events(body: bytes) -> list[TelemetryEvent] | None:
    """The events the decoder reads item by item, if it accepts every one."""
    decoded = Decoder().decode_value(orjson.loads(body), NOW, raw=body)
    if decoded.rejected:
        return None
    assert [accepted.index for accepted in decoded.accepted] == list(range(len(decoded.accepted)))
    return [accepted.event for accepted in decoded.accepted]


def wrapped(items: list[bytes], shape: str) -> bytes:
    array = b"[" + b",".join(items) + b"]"
    return array if shape == "array" else b'{"events": ' + array + b"}"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(bodies(), min_size=1, max_size=4), shape=st.sampled_from(["array", "envelope"])
)
def test_what_it_accepts_of_several_the_decoder_accepts_item_by_item(
    items: list[bytes], shape: str
) -> None:
    body = wrapped(items, shape)
    events = common_events(body, LATEST, MOST)
    if events is not None:
        model = model_events(body)
        assert model is not None and len(events) == len(model) == len(items)
        for event, expected in zip(events, model, strict=True):
            assert_same(event, expected)


def test_bodies_of_several_common_events_are_read_here() -> None:
    items = ACCEPTED[:6]
    for body in (
        wrapped(items, "array"),
        wrapped(items, "envelope"),
        b" \n" + wrapped(items, "array"),
    ):
        events = common_events(body, LATEST, MOST)
        assert events is not None and len(events) == len(items)
        for event, item in zip(events, items, strict=True):
            assert_same(event, model_event(item))
    single = common_events(ACCEPTED[1], LATEST, MOST)
    assert single is not None and len(single) == 1
    assert_same(single[0], model_event(ACCEPTED[1]))


@pytest.mark.parametrize(
    "body",
    [
        wrapped([ACCEPTED[0], REFUSED["negative tokens"], ACCEPTED[1]], "array"),
        wrapped([ACCEPTED[0], REFUSED["past the skew"]], "array"),
        wrapped([REFUSED["metadata trace_id not a string"], ACCEPTED[0]], "envelope"),
        wrapped([ACCEPTED[0], LEFT_TO_THE_MODEL["a space for the T"]], "envelope"),
        b"[]",
        b'{"events": []}',
        b'{"events": [' + ACCEPTED[0] + b'], "source": "x"}',
        wrapped([ACCEPTED[0]] * (MOST + 1), "array"),
        b"[" + ACCEPTED[0] + b"] x",
    ],
    ids=[
        "one refused",
        "one past the skew",
        "one without a trace_id",
        "one left to the model",
        "empty",
        "empty envelope",
        "envelope key",
        "too many",
        "trailing bytes",
    ],
)
def test_several_with_any_doubt_are_left_to_the_decoder(body: bytes) -> None:
    assert common_events(body, LATEST, MOST) is None


def test_the_decoder_takes_bodies_of_several_within_its_limits() -> None:
    body = wrapped(ACCEPTED[:3], "array")
    events = Decoder().common_events(body, NOW)
    assert events is not None and len(events) == 3
    small = Decoder(replace(Decoder().limits, max_body_bytes=len(body) - 1))
    assert small.common_events(body, NOW) is None


def test_the_reader_has_the_models_fields_in_their_order() -> None:
    """The struct restates the model's fields in msgspec's terms: a field added to the model
    must be added there too (the event's __dict__ keeps the struct's order)."""
    assert [field.name for field in msgspec.structs.fields(_Event)] == list(
        TelemetryEvent.model_fields
    )
