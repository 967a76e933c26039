"""Pins what the processor stores: ids, pks and JSON bytes of documents and quarantine records.

Replays and the cross-backend tests depend on the same input always giving byte-identical
output, so any optimisation of decode/enrich/store must leave these digests unchanged. The
golden file was produced by this module (``python -m tests.unit.stream.test_output_golden``)
before the processor's CPU work; regenerate it only for an intended change of the stored form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import orjson

from schemas import AppDirectory, TelemetryDocument
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.producers.simulator import Simulator

GOLDEN = Path(__file__).with_name("golden_output.txt")
NOW = datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=UTC)
APPS = AppDirectory(overrides={"checkout-bot": {"metadata": {"owner": "payments", "tier": "gold"}}})
TS = "2026-11-22T10:00:00Z"


def _event(**fields: object) -> dict[str, object]:
    return {"app_id": "checkout-bot", "timestamp": TS, "trace_id": "t-1", **fields}


# Inputs chosen for the corners of serialisation: number spellings, escapes, non-ASCII text,
# offsets and fractions of timestamps, optional fields absent or null, every transport shape.
EDGE_BODIES: tuple[bytes, ...] = (
    orjson.dumps(_event()),
    orjson.dumps(_event(user_id="alice@example.com", event_id="evt-1")),
    orjson.dumps(_event(timestamp="2026-11-21T23:30:00.5-01:00", span_id="s", model_id="m")),
    orjson.dumps(_event(timestamp="2026-11-22T10:00:00.123456789+05:30")),
    orjson.dumps(_event(timestamp=1795000000)),
    orjson.dumps(_event(timestamp=1795000000.25)),
    b'{"app_id":"checkout-bot","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":1}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":1e-7}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":1e20}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":123456789.125}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":0.30000000000000004}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":-0.0}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","scores":{"x":1,"y":0.1,"z":1e300}}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","status":"error","error_type":"E"}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","tokens":{"input":5}}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","tokens":null,"user_id":null}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","schema_version":1}',
    orjson.dumps(
        _event(
            metadata={
                "b": True,
                "i": -(2**62),
                "f": 1.0,
                "s": "",
                "u": "héllo ✓ 😀",
                "big": 12345678901234567890,
            }
        )
    ),
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","metadata":{"trace_id":"meta-t","c":"w"}}',
    orjson.dumps(
        _event(
            input_text='quote " backslash \\ slash / tab \t nl \n cr \r nul \x00 \x1f del \x7f',
            output_text="</script> \u2028 \u2029 \ufeff é 中文 𝄞 \U0001f600",
        )
    ),
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","output_text":"\\u00e9\\ud83d\\ude00\\u0001"}',
    b'{"app_id":"a","app_id":"b","timestamp":"2026-11-22T10:00:00Z","trace_id":"t"}',
    b'  {"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t"}\n',
    b'[{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t1"},'
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z"},7,'
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t2","user_id":"bob"}]',
    b'{"events":[{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t3"}]}',
    b'{"events":{}}',
    b"[]",
    b"42",
    b"{broken",
    b"\xff\xfe\x00",
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00","trace_id":"t"}',
    b'{"app_id":"a","timestamp":"2027-11-22T10:00:00Z","trace_id":"t"}',
    b'{"app_id":"a b","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","extra":1}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","metadata":{"k":[1]}}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":-1}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","scores":{"x":"NaN"}}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","tokens":{"input":-1}}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","status":"maybe"}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"","latency_ms":"12"}',
    b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","output_text":"'
    + b"x" * 40_000
    + b'"}',
    b"[" + b",".join([b"{}"] * 501) + b"]",
)

_POSITIONS = (
    ("0", None, datetime(2026, 11, 22, 11, 59, 59, tzinfo=UTC)),
    ("3", "1234", datetime(2026, 11, 22, 12, 59, 58, 250000, tzinfo=timezone(timedelta(hours=1)))),
    ("1", "77", datetime(2026, 11, 22, 11, 0, 0, 1, tzinfo=UTC)),
)


def _bodies() -> Iterator[bytes]:
    yield from EDGE_BODIES
    simulator = Simulator(
        apps=12, seed=11, start=datetime(2026, 11, 22, 10, 0, tzinfo=UTC), invalid_fraction=0.1
    )
    for event in simulator.events(1500):
        yield event.body


def stored_lines() -> list[str]:
    """One line per stored record: kind, pk, id, and digests of the stored JSON and of the
    document's fields serialised again (so the model's field values are pinned too)."""
    decoder = Decoder()
    enricher = Enricher(APPS, b"golden-key", "local")
    lines: list[str] = []
    for sequence, body in enumerate(_bodies()):
        partition, offset, enqueued = _POSITIONS[sequence % len(_POSITIONS)]
        position = ReceivedEvent(body, partition, sequence, enqueued, offset)
        processed_at = NOW + timedelta(microseconds=sequence * 37)
        decoded = decoder.decode(body, NOW)
        for accepted in decoded.accepted:
            doc = enricher.document(
                accepted.event, position, accepted.index, processed_at, sequence % 5 == 0
            )
            stored = doc.json_bytes()
            fields = TelemetryDocument.model_validate(doc.model_dump()).model_dump_json()
            lines.append(
                f"doc {doc.pk} {doc.id} {hashlib.sha256(stored).hexdigest()[:20]} "
                f"{hashlib.sha256(fields.encode()).hexdigest()[:20]}"
            )
        for rejected in decoded.rejected:
            at = position if sequence % 2 else None
            record = enricher.quarantine(rejected, at, processed_at)
            stored = record.model_dump_json().encode()
            lines.append(
                f"quarantine {record.pk} {record.id} {hashlib.sha256(stored).hexdigest()[:20]}"
            )
    return lines


def test_stored_output_matches_the_golden_file() -> None:
    expected = GOLDEN.read_text().splitlines()
    actual = stored_lines()
    assert len(actual) == len(expected)
    pairs = enumerate(zip(actual, expected, strict=True))
    mismatches = [(i, a, e) for i, (a, e) in pairs if a != e]
    assert mismatches[:5] == []


def test_golden_file_covers_documents_and_quarantine() -> None:
    kinds = {line.split(" ", 1)[0] for line in GOLDEN.read_text().splitlines()}
    assert kinds == {"doc", "quarantine"}


if __name__ == "__main__":
    GOLDEN.write_text("\n".join(stored_lines()) + "\n")
