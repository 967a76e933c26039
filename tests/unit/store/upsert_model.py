"""The stores' upsert against a model of its rule, on generated batches: a document is stored
when its (pk, id) is free, replaces the stored one when both carry the same event, and is
refused (returned by ``write``) otherwise, one document after another in batch order. Shared by
the SQLite (unit) and Cosmos (integration) tests.

The example scenario (event_id_conflicts.py) names the cases; this one mixes them: reused
event_ids at the same and other times, in one batch and across batches, over two days, with
re-reads of the same event (other ingest fields, its objects' keys in another order) among
them."""

from __future__ import annotations

from hypothesis import strategies as st

from schemas import TelemetryDocument
from store.ports import TelemetryStore
from tests.unit.store.event_id_conflicts import SCORES, TAGS, document, reverse

# An event is (timestamp, event_id, latency): two times of one day and one of the day before,
# two producer ids and none (a content id), two latencies. So equal events recur, and a reused
# event_id can be the same event or another, at its time or at another of the same day.
TIMES = ("2026-11-22T10:00:00Z", "2026-11-22T11:00:00Z", "2026-11-21T10:00:00Z")
EVENT_IDS = (None, "e-1", "e-2")
LATENCIES = (1.0, 2.0)
EVENT = st.tuples(st.sampled_from(TIMES), st.sampled_from(EVENT_IDS), st.sampled_from(LATENCIES))
# A read is an event and whether its objects (metadata, scores) list their keys in reverse
# order, as a producer retrying through another serializer may send them: the same event.
READ = st.tuples(EVENT, st.booleans())
BATCHES = st.lists(st.lists(READ, min_size=1, max_size=6), min_size=1, max_size=5)

Event = tuple[str, str | None, float]
Read = tuple[Event, bool]


def expected(
    stored: dict[tuple[str, str], tuple[Event, TelemetryDocument]],
    batch: list[tuple[Event, TelemetryDocument]],
) -> list[TelemetryDocument]:
    """The model: ``stored`` after the batch, and the documents it refuses, in order."""
    refused = []
    for event, doc in batch:
        key = (doc.pk, doc.id)
        held = stored.get(key)
        if held is None or held[0] == event:
            stored[key] = (event, doc)
        else:
            refused.append(doc)
    return refused


async def check_upsert_model(
    store: TelemetryStore, batches: list[list[Read]], app_id: str = "a"
) -> None:
    """Write ``batches`` of ``app_id``'s events (an app of their own when the store holds
    others') and compare every answer, stored document and the count with the model's."""
    stored: dict[tuple[str, str], tuple[Event, TelemetryDocument]] = {}
    before = await store.count("telemetry")
    sequence = 0
    for reads in batches:
        batch = []
        for index, (event, reordered) in enumerate(reads):
            sequence += 1
            timestamp, event_id, latency = event
            doc = document(
                sequence,
                index=index,
                app_id=app_id,
                timestamp=timestamp,
                event_id=event_id,
                latency_ms=latency,
                metadata=reverse(TAGS) if reordered else TAGS,
                scores=reverse(SCORES) if reordered else SCORES,
            )
            batch.append((event, doc))
        refused = expected(stored, batch)
        got = await store.write([doc for _, doc in batch], [])
        assert [id(doc) for doc in got] == [id(doc) for doc in refused], (reads, got)
    for (pk, doc_id), (_, doc) in stored.items():
        assert await store.get_telemetry(doc_id, pk) == doc
    assert await store.count("telemetry") - before == len(stored)
