"""Documents built by the enricher equal validated documents, field for field."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from schemas import AppDirectory, TelemetryDocument, TelemetryEvent
from stream.enrich import Enricher
from stream.ports import ReceivedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_trusted_construction_equals_validated_construction() -> None:
    event = TelemetryEvent.model_validate(
        {
            "app_id": "a",
            "timestamp": "2026-11-22T11:00:00Z",
            "trace_id": "t",
            "tokens": {"input": 1, "output": 2},
            "scores": {"g": 0.5},
            "user_id": "u",
            "metadata": {"channel": "web"},
        },
        context={"now": NOW},
    )
    position = ReceivedEvent(b"{}", "3", 42, NOW, "42")
    built = Enricher(AppDirectory(), b"key", "local").document(event, position, 0, NOW, False)
    validated = TelemetryDocument.model_validate(built.model_dump())
    assert built == validated
    assert built.model_dump_json() == validated.model_dump_json()
    # The JSON the enricher serialised while building is the same document.
    assert TelemetryDocument.model_validate_json(built.json_bytes()) == validated
    assert orjson.loads(built.json_bytes()) == orjson.loads(validated.model_dump_json())
    assert built.model_fields_set == validated.model_fields_set
    assert "user_id" not in built.model_dump()


def test_trusted_documents_share_a_fields_set_that_copies_never_change() -> None:
    enricher = Enricher(AppDirectory(), b"key", "local")
    position = ReceivedEvent(b"{}", "3", 42, NOW, "42")
    events = [
        TelemetryEvent.model_validate(
            {"app_id": "a", "timestamp": "2026-11-22T11:00:00Z", "trace_id": trace},
            context={"now": NOW},
        )
        for trace in ("t1", "t2")
    ]
    first, second = (enricher.document(e, position, 0, NOW, False) for e in events)
    copied = first.model_copy(update={"trace_id": "t3"})
    assert copied.trace_id == "t3"
    assert first.trace_id == "t1"
    every_field = set(TelemetryDocument.model_fields)
    assert first.model_fields_set == second.model_fields_set == every_field
    assert copied.model_fields_set == every_field
    assert copied.model_fields_set is not first.model_fields_set
