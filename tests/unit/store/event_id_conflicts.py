"""One scenario for every TelemetryStore: an ``event_id`` reused by a different event is refused
(returned by ``write``, the stored event kept), while a re-read or replay of the same event
updates its document in place. Shared by the SQLite (unit) and Cosmos (integration) tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from schemas import AppDirectory, TelemetryDocument, TelemetryEvent
from store.ports import TelemetryStore
from stream.enrich import Enricher
from stream.ports import ReceivedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
_ENRICHER = Enricher(AppDirectory(), b"k", "local")


def document(sequence: int, *, index: int = 0, **fields: Any) -> TelemetryDocument:
    """A document of app ``a`` read at ``sequence`` (enqueued ``sequence`` seconds after NOW)."""
    values = {"app_id": "a", "timestamp": "2026-11-22T10:00:00Z", "trace_id": "t", **fields}
    event = TelemetryEvent.model_validate(values, context={"now": NOW})
    enqueued = NOW + timedelta(seconds=sequence)
    position = ReceivedEvent(b"{}", "0", sequence, enqueued, str(sequence))
    return _ENRICHER.document(event, position, index, enqueued, False)


async def check_event_id_conflicts(store: TelemetryStore) -> None:
    first = document(1, event_id="e-1", latency_ms=100.0, user_id="u-1")
    plain = document(2, latency_ms=5.0)
    assert await store.write([first, plain], []) == []

    reread = document(7, event_id="e-1", latency_ms=100.0, user_id="u-1")
    other = document(8, event_id="e-1", latency_ms=999.0, user_id="u-1")
    other_user = document(8, index=1, event_id="e-1", latency_ms=100.0, user_id="u-2")
    # Alone in its batch, so only what is stored can refuse it.
    refused = await store.write([other], [])
    assert len(refused) == 1 and refused[0] is other
    refused = await store.write([reread, other_user], [])
    assert len(refused) == 1 and refused[0] is other_user
    # The re-read replaced the first read (ingest fields), the other events changed nothing.
    assert await store.get_telemetry("e-1", first.pk) == reread
    assert await store.get_telemetry(plain.id, plain.pk) == plain
    assert await store.count("telemetry") == 2

    # Within one batch the first event to use an id keeps it, whatever follows; writing the
    # same batch again refuses the same documents (a retried batch decides alike).
    fresh = document(9, event_id="e-2", status="error", error_type="Timeout")
    clash = document(9, index=1, event_id="e-2", status="ok")
    again = document(9, index=2, event_id="e-2", status="error", error_type="Timeout")
    for _ in range(2):
        assert await store.write([fresh, clash, again], []) == [clash]
        assert await store.get_telemetry("e-2", fresh.pk) == again

    # An event_id on another day is another document (ids are unique per partition key).
    next_day = document(10, event_id="e-1", timestamp="2026-11-21T10:00:00Z")
    assert await store.write([next_day], []) == []
    assert await store.count("telemetry") == 4
