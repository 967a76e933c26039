"""Bodies of events one per line (HTTP ingest's NDJSON content types)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from stream.decode import DecodeLimits, Decoder

NOW = datetime(2026, 11, 22, 12, tzinfo=UTC)
EVENT = {"app_id": "a", "timestamp": "2026-11-22T11:00:00Z", "trace_id": "t"}


def test_each_line_is_a_body_and_the_indexes_run_over_all_of_them() -> None:
    lines = [
        orjson.dumps(EVENT),
        orjson.dumps([EVENT, {**EVENT, "status": "bad"}]),  # a line may hold an array, as in send
        b'{"app_id": ',
        orjson.dumps({**EVENT, "trace_id": "t4"}),
    ]
    decoded = Decoder().decode_ndjson(b"\n".join(lines), NOW)
    assert [a.index for a in decoded.accepted] == [0, 1, 4]
    assert [(r.index, r.issues[0].code) for r in decoded.rejected] == [
        (2, "enum"),
        (3, "malformed_json"),
    ]
    assert decoded.rejected[1].raw == b'{"app_id":'  # the line as send splits it


def test_an_empty_body_and_too_many_events_are_whole_body_rejections() -> None:
    decoder = Decoder(DecodeLimits(max_events_per_body=3))
    (empty,) = decoder.decode_ndjson(b"\n \r\n", NOW).rejected
    assert empty.issues[0].code == "no_events"
    # Three lines, but four events: counted after reading them.
    body = orjson.dumps([EVENT, EVENT]) + b"\n" + orjson.dumps(EVENT) + b"\n" + orjson.dumps(EVENT)
    (whole,) = decoder.decode_ndjson(body, NOW).rejected
    assert whole.issues[0].code == "too_many_events" and whole.raw == body
