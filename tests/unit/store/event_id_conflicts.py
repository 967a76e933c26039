"""One scenario for every TelemetryStore: an ``event_id`` reused by a different event is refused
(returned by ``write``, the stored event kept), while a re-read or replay of the same event
updates its document in place — also when its user pseudonyms differ (made with another key, or
a ``metadata.user_id`` an older version stored raw), or its objects list their keys in another
order. Shared by the SQLite (unit) and Cosmos (integration) tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from schemas import AppDirectory, TelemetryDocument, TelemetryEvent
from store.ports import TelemetryStore
from stream.enrich import Enricher
from stream.ports import ReceivedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
LATER = "2026-11-22T11:00:00Z"
_ENRICHER = Enricher(AppDirectory(), b"k", "local")


def document(
    sequence: int, *, index: int = 0, key: bytes = b"k", **fields: Any
) -> TelemetryDocument:
    """A document of app ``a`` read at ``sequence`` (enqueued ``sequence`` seconds after NOW),
    its user pseudonyms made with ``key``."""
    values = {"app_id": "a", "timestamp": "2026-11-22T10:00:00Z", "trace_id": "t", **fields}
    event = TelemetryEvent.model_validate(values, context={"now": NOW})
    enqueued = NOW + timedelta(seconds=sequence)
    position = ReceivedEvent(b"{}", "0", sequence, enqueued, str(sequence))
    enricher = (
        _ENRICHER if key == _ENRICHER.user_hash_key else Enricher(AppDirectory(), key, "local")
    )
    return enricher.document(event, position, index, enqueued, False)


def stored_raw(document: TelemetryDocument, user_id: str | int) -> TelemetryDocument:
    """``document`` as a version that did not hash ``metadata.user_id`` stored it: the same
    bytes but that value, as sent, under the same id (a content id is made from the event as
    sent)."""
    stored = orjson.loads(document.json_bytes())
    stored["metadata"]["user_id"] = user_id
    raw = document.model_copy(update={"metadata": stored["metadata"]})
    raw._json = orjson.dumps(stored)
    return raw


async def check_event_id_conflicts(store: TelemetryStore) -> None:
    first = document(1, event_id="e-1", latency_ms=100.0, user_id="u-1")
    plain = document(2, latency_ms=5.0)
    assert await store.write([first, plain], []) == []

    reread = document(7, event_id="e-1", latency_ms=100.0, user_id="u-1")
    other = document(8, event_id="e-1", latency_ms=999.0, user_id="u-1")
    # Whether an event names a user is the event's: one without is another event.
    anonymous = document(8, index=1, event_id="e-1", latency_ms=100.0)
    # Alone in its batch, so only what is stored can refuse it; at another time of the same
    # app-day too (the embedded store's key is led by the time).
    later = document(8, event_id="e-1", latency_ms=100.0, user_id="u-1", timestamp=LATER)
    assert later.pk == first.pk and later.timestamp != first.timestamp
    for different in (other, later):
        refused = await store.write([different], [])
        assert len(refused) == 1 and refused[0] is different
    refused = await store.write([reread, anonymous], [])
    assert len(refused) == 1 and refused[0] is anonymous
    # The re-read replaced the first read (ingest fields), the other events changed nothing.
    assert await store.get_telemetry("e-1", first.pk) == reread
    assert await store.get_telemetry(plain.id, plain.pk) == plain
    assert await store.count("telemetry") == 2

    # The user pseudonyms are made with a key, not sent: the same event hashed with another
    # key is the same event, and its document replaces the stored one, hashes and all. Another
    # event is refused as before.
    rekeyed = document(11, event_id="e-1", latency_ms=100.0, user_id="u-1", key=b"k2")
    assert rekeyed.user_hash != reread.user_hash
    assert await store.write([rekeyed], []) == []
    assert await store.get_telemetry("e-1", first.pk) == rekeyed
    other_rekeyed = document(12, event_id="e-1", latency_ms=999.0, user_id="u-1", key=b"k2")
    assert await store.write([other_rekeyed], []) == [other_rekeyed]
    # A document stored with its metadata.user_id raw (before it was hashed), under an event_id
    # or a content id: a replay stores the hash in its place.
    for event_id in ("e-3", None):
        hashed = document(13, metadata={"k": "v", "user_id": 987654321}, event_id=event_id)
        raw = stored_raw(hashed, 987654321)
        assert raw.id == hashed.id and raw.metadata["user_id"] != hashed.metadata["user_id"]
        assert await store.write([raw], []) == []
        assert await store.write([hashed], []) == []
        assert await store.get_telemetry(hashed.id, hashed.pk) == hashed
    # Whether it has a metadata.user_id is the event's, as another tag's value is.
    without = document(14, metadata={"k": "v"}, event_id="e-3")
    tagged = document(14, index=1, metadata={"k": "w", "user_id": 987654321}, event_id="e-3")
    for different in (without, tagged):
        assert await store.write([different], []) == [different]
    # In one batch alike: the later read of the event replaces the earlier.
    batched = document(15, metadata={"user_id": "dave"}, event_id="e-4")
    assert await store.write([stored_raw(batched, "dave"), batched], []) == []
    assert await store.get_telemetry("e-4", batched.pk) == batched
    assert await store.count("telemetry") == 5

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
    assert await store.count("telemetry") == 7

    # Another event under a stored id, then a re-read of the stored event, in one batch: each is
    # decided against what the one before it left, so the other is refused and the re-read
    # replaces the stored document.
    other_first = document(16, event_id="e-2", status="ok")
    reread_after = document(16, index=1, event_id="e-2", status="error", error_type="Timeout")
    assert await store.write([other_first, reread_after], []) == [other_first]
    assert await store.get_telemetry("e-2", fresh.pk) == reread_after
    assert await store.count("telemetry") == 7

    # JSON objects are unordered: the same event with its objects' keys in another order (a
    # producer retrying through another serializer) is the same event, decided against the
    # stored document or the batch's one before it. A value of another type is another event:
    # ``true`` is not ``1`` (whether ``1.0`` is differs: Cosmos DB's numbers are doubles).
    ordered = document(17, event_id="e-5", metadata=TAGS, scores=SCORES)
    reordered = document(18, event_id="e-5", metadata=reverse(TAGS), scores=reverse(SCORES))
    assert list(reordered.metadata) != list(ordered.metadata)
    assert await store.write([ordered], []) == []
    assert await store.write([reordered], []) == []
    assert await store.get_telemetry("e-5", ordered.pk) == reordered
    again = document(19, event_id="e-5", metadata=TAGS, scores=SCORES)
    reordered_again = document(19, index=1, event_id="e-5", metadata=reverse(TAGS), scores=SCORES)
    assert await store.write([again, reordered_again], []) == []
    assert await store.get_telemetry("e-5", ordered.pk) == reordered_again
    retyped = document(20, event_id="e-5", metadata={**reverse(TAGS), "n": True}, scores=SCORES)
    assert await store.write([retyped], []) == [retyped]
    assert await store.get_telemetry("e-5", ordered.pk) == reordered_again
    assert await store.count("telemetry") == 8

    # An integer beyond a double's exact range is another event than its digits as a string
    # (Cosmos DB keeps the integer as its decimal string: that string is not the event's).
    big = 12345678901234567890
    numbered = document(21, event_id="e-6", metadata={"n": big})
    assert await store.write([numbered], []) == []
    digits = document(22, event_id="e-6", metadata={"n": str(big)})
    assert await store.write([digits], []) == [digits]
    assert await store.get_telemetry("e-6", numbered.pk) == numbered
    assert await store.write([document(23, event_id="e-6", metadata={"n": big})], []) == []
    worded = document(24, event_id="e-7", metadata={"n": str(big)})
    assert await store.write([worded], []) == []
    numbers = document(25, event_id="e-7", metadata={"n": big})
    assert await store.write([numbers], []) == [numbers]
    assert await store.get_telemetry("e-7", worded.pk) == worded
    assert await store.count("telemetry") == 10


# An event's objects: tags of every kind (a pseudonym among them) and scores.
TAGS: dict[str, Any] = {"a": "x", "n": 1, "flag": False, "user_id": "dave", "f": 0.5}
SCORES = {"relevance": 0.9, "toxicity": 0.1, "faithfulness": 0.75}


def reverse(mapping: dict[str, Any]) -> dict[str, Any]:
    """The same object, its keys in reverse order."""
    return dict(reversed(mapping.items()))
