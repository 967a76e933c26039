"""One gate for values: what the decoder accepts, every later step (enrichment, the JSON the
stores keep, reading it back) accepts too; the rest is rejected with a specific code."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from schemas import AppDirectory, TelemetryDocument
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
HEAD = b'{"app_id":"a","trace_id":"t","timestamp":'


def _body(timestamp: bytes = b'"2026-11-22T10:00:00Z"', tail: bytes = b"") -> bytes:
    return HEAD + timestamp + tail + b"}"


NAN = b',"metadata":{"x":NaN}'
BIG_TOKENS = b',"tokens":{"input":18446744073709551616}'


@pytest.mark.parametrize(
    ("body", "code", "location"),
    [
        # Not JSON (RFC 8259 has no NaN or Infinity), or a number no double holds.
        (_body(tail=NAN), "malformed_json", "$"),
        (_body(tail=b',"metadata":{"x":-Infinity}'), "malformed_json", "$"),
        (_body(tail=b',"metadata":{"x":1e400}'), "malformed_json", "$"),
        (_body(tail=b',"scores":{"x":Infinity}'), "malformed_json", "$"),
        (_body(tail=b',"latency_ms":NaN'), "malformed_json", "$"),
        (_body(tail=BIG_TOKENS), "int_parsing_size", "$.tokens.input"),
        (_body(b'"0001-01-01T00:00:00+05:00"'), "timestamp_out_of_range", "$.timestamp"),
        (_body(b'"0001-01-01T00:00:00Z"'), "timestamp_out_of_range", "$.timestamp"),
        (_body(b'"1969-12-31T23:59:59Z"'), "timestamp_out_of_range", "$.timestamp"),
        (_body(b'"9999-12-31T23:59:59-05:00"'), "timestamp_out_of_range", "$.timestamp"),
        (_body(b'"9999-12-31T23:59:59Z"'), "timestamp_in_future", "$.timestamp"),
        (b'{"events":[],"extra":1}', "unknown_envelope_key", "$"),
        # A lone surrogate is no Unicode text: no store could keep it as UTF-8.
        (_body(tail=b',"input_text":"\\ud800"'), "malformed_json", "$"),
    ],
)
def test_values_no_later_step_could_keep_are_rejected_with_their_code(
    body: bytes, code: str, location: str
) -> None:
    decoded = Decoder().decode(body, NOW)
    assert decoded.accepted == []
    issues = [(i.code, i.location) for r in decoded.rejected for i in r.issues]
    assert (code, location) in issues, issues


@pytest.mark.parametrize(
    "tail",
    [
        b',"metadata":{"x":18446744073709551615,"y":-9223372036854775808,"z":1.7976931348623157e308}',
        b',"tokens":{"input":18446744073709551615,"output":0}',
        b',"latency_ms":5e-324',
        b',"input_text":"NUL \\u0000, non-character \\uffff, astral \\ud83d\\ude00"',
    ],
)
def test_what_is_accepted_is_enriched_stored_and_read_back(tail: bytes) -> None:
    body = _body(b'"1970-01-01T00:00:00Z"', tail)
    decoded = Decoder().decode(body, NOW)
    assert [r.issues for r in decoded.rejected] == []
    (accepted,) = decoded.accepted
    position = ReceivedEvent(body=body, partition="0", sequence=1, enqueued_time=NOW)
    document = Enricher(AppDirectory(), b"k", "log").document(
        accepted.event, position, 0, NOW, False
    )
    stored = document.json_bytes()
    assert TelemetryDocument.model_validate_json(stored) == document


def test_metadata_integers_beyond_64_bits_are_kept_as_floats() -> None:
    body = _body(tail=b',"metadata":{"x":18446744073709551616,"y":-9223372036854775809}')
    (accepted,) = Decoder().decode(body, NOW).accepted
    assert accepted.event.metadata == {"x": 2.0**64, "y": -(2.0**63)}
    assert all(isinstance(value, float) for value in accepted.event.metadata.values())
