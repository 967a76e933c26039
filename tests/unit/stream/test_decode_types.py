"""Values are taken in their JSON types only: a value of another type, or a timestamp in
another form than RFC 3339's, is refused at the decoder with a specific code and location,
never converted (pydantic's lax mode read true as 1, "1_000" as 1000, a unix time as a date,
year 9999 in seconds as milliseconds). The model decides the same reading the JSON itself."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

from schemas import TelemetryEvent, Tokens
from stream.decode import Decoder

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CONTEXT = {"now": NOW}
HEAD = b'{"app_id":"a","trace_id":"t"'
TIME = b',"timestamp":"2026-11-22T11:00:00Z"'


def body(field: bytes, value: bytes) -> bytes:
    """An event with ``field`` set to the JSON text ``value`` (a timestamp added unless it is
    the field)."""
    time = b"" if field == b"timestamp" else TIME
    return HEAD + time + b',"' + field + b'":' + value + b"}"


REFUSED = {
    # (field, JSON value): (code, location, words of the message)
    (b"timestamp", b"1765101600"): ("datetime_type", "$.timestamp", "a number (1765101600)"),
    (b"timestamp", b'"1765101600"'): ("timestamp_not_rfc3339", "$.timestamp", "RFC 3339"),
    (b"timestamp", b"253402300799"): ("datetime_type", "$.timestamp", "RFC 3339 string"),
    (b"timestamp", b"1765101600123"): ("datetime_type", "$.timestamp", "got a number"),
    (b"timestamp", b"1.5"): ("datetime_type", "$.timestamp", "a number (1.5)"),
    (b"timestamp", b"true"): ("datetime_type", "$.timestamp", "got a boolean"),
    (b"timestamp", b"null"): ("datetime_type", "$.timestamp", "got null"),
    (b"timestamp", b'{"s":1}'): ("datetime_type", "$.timestamp", "got an object"),
    (b"timestamp", b'"2026-11-22T11:00Z"'): ("timestamp_not_rfc3339", "$.timestamp", "11:00Z"),
    (b"timestamp", b'"2026-11-22T11:00:00+0000"'): (
        "timestamp_not_rfc3339",
        "$.timestamp",
        "+0000",
    ),
    (b"timestamp", b'"2026-11-22T11:00:00,5Z"'): ("timestamp_not_rfc3339", "$.timestamp", ",5Z"),
    (b"latency_ms", b"true"): ("float_type", "$.latency_ms", "JSON number, got a boolean"),
    (b"latency_ms", b'"1_000"'): ("float_parsing", "$.latency_ms", "JSON number, got a string"),
    (b"latency_ms", b'"5"'): ("float_parsing", "$.latency_ms", "got a string"),
    (b"tokens", b'{"input":"100"}'): ("int_parsing", "$.tokens.input", "got a string"),
    (b"tokens", b'{"input":false}'): ("int_type", "$.tokens.input", "got a boolean"),
    (b"tokens", b'{"output":100.0}'): ("int_from_float", "$.tokens.output", "got 100.0"),
    (b"tokens", b'{"input":1e2}'): ("int_from_float", "$.tokens.input", "exponent"),
    (b"tokens", b'{"input":18446744073709551616}'): (
        "int_parsing_size",
        "$.tokens.input",
        "64 bits",
    ),
    (b"scores", b'{"a":true}'): ("float_type", "$.scores.a", "got a boolean"),
    (b"scores", b'{"a":0.5,"b":"0.5"}'): ("float_parsing", "$.scores.b", "got a string"),
    (b"schema_version", b"true"): ("literal_error", "$.schema_version", "got a boolean"),
    (b"schema_version", b"1.0"): ("literal_error", "$.schema_version", "a number (1.0)"),
    (b"schema_version", b'"1"'): ("literal_error", "$.schema_version", "got a string"),
}
IDS = [f"{field.decode()}={value.decode()}" for field, value in REFUSED]


@pytest.mark.parametrize(("case", "expected"), REFUSED.items(), ids=IDS)
def test_a_value_of_another_json_type_is_refused_with_its_code(
    case: tuple[bytes, bytes], expected: tuple[str, str, str]
) -> None:
    code, location, words = expected
    decoded = Decoder().decode(body(*case), NOW)
    assert decoded.accepted == []
    ((rejected_issue,),) = [rejected.issues for rejected in decoded.rejected]
    assert (rejected_issue.code, rejected_issue.location) == (code, location)
    assert words in rejected_issue.message


@pytest.mark.parametrize(("case", "expected"), REFUSED.items(), ids=IDS)
def test_each_item_of_a_batch_is_refused_alone_at_its_location(
    case: tuple[bytes, bytes], expected: tuple[str, str, str]
) -> None:
    code, location, _ = expected
    good = body(b"latency_ms", b"5")
    for batch, prefix in (
        (b"[" + good + b"," + body(*case) + b"]", "$[1]"),
        (b'{"events":[' + good + b"," + body(*case) + b"]}", "$.events[1]"),
    ):
        decoded = Decoder().decode(batch, NOW)
        assert [accepted.index for accepted in decoded.accepted] == [0]
        ((rejected,),) = [decoded.rejected]
        assert [(i.code, i.location) for i in rejected.issues] == [
            (code, location.replace("$", prefix, 1))
        ]


@pytest.mark.parametrize("case", REFUSED, ids=IDS)
def test_the_model_reading_the_json_itself_refuses_alike(case: tuple[bytes, bytes]) -> None:
    """The decoder validates the values orjson made of the JSON; the model's own JSON reader
    (what ``evalstream schema``'s producers might use) gives the same errors."""
    raw = body(*case)
    with pytest.raises(ValidationError) as from_json:
        TelemetryEvent.model_validate_json(raw, context=CONTEXT)
    with pytest.raises(ValidationError) as from_python:
        TelemetryEvent.model_validate(orjson.loads(raw), context=CONTEXT)
    assert [(e["type"], e["loc"]) for e in from_json.value.errors()] == [
        (e["type"], e["loc"]) for e in from_python.value.errors()
    ]


def at(hour: int, microsecond: int = 0) -> datetime:
    return datetime(2026, 11, 22, hour, 0, 0, microsecond, tzinfo=UTC)


TAKEN = [
    (b"latency_ms", b"5", 5.0),
    (b"latency_ms", b"0", 0.0),
    (b"scores", b'{"a":1,"b":-0.25}', {"a": 1.0, "b": -0.25}),
    (b"tokens", b'{"input":18446744073709551615}', Tokens(input=2**64 - 1)),
    (b"schema_version", b"1", 1),
    (b"metadata", b'{"b":true,"i":1,"f":1.0,"s":"1"}', {"b": True, "i": 1, "f": 1.0, "s": "1"}),
    # RFC 3339 allows a space for the T (its note), lower case, -00:00 and any fraction
    # digits (cut to microseconds, what the stores keep).
    (b"timestamp", b'"2026-11-22 11:00:00Z"', at(11)),
    (b"timestamp", b'"2026-11-22t11:00:00z"', at(11)),
    (b"timestamp", b'"2026-11-22T11:00:00-00:00"', at(11)),
    (b"timestamp", b'"2026-11-22T13:00:00.123456789+02:00"', at(11, 123456)),
]


@pytest.mark.parametrize(
    ("field", "value", "expected"), TAKEN, ids=[f"{f.decode()}={v.decode()}" for f, v, _ in TAKEN]
)
def test_json_numbers_and_rfc_3339_timestamps_are_still_taken(
    field: bytes, value: bytes, expected: object
) -> None:
    decoded = Decoder().decode(body(field, value), NOW)
    assert decoded.rejected == []
    ((accepted,),) = [decoded.accepted]
    got = getattr(accepted.event, field.decode())
    assert got == expected
    # The JSON types, not only equal values: 1 == 1.0 == True in Python.
    if isinstance(expected, dict):
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    else:
        assert type(got) is type(expected)
