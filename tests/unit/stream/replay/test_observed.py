"""Shadow detection's compact documents: exact round trip, and the same breaches as the
documents themselves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from schemas.appconfig import AppDirectory
from schemas.document import DerivedSizes, TelemetryDocument
from schemas.telemetry import Tokens
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.hotpath import HotPath
from stream.ports import ReceivedEvent
from stream.replay.job import JobFile
from stream.replay.observed import pack, unpack

from ..event_bodies import bodies
from ..hotpath.streams import document
from ..hotpath.test_engine import incident_stream, run, uninterrupted

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ENRICHER = Enricher(AppDirectory(), b"k", "local")
FIELDS = ("id", "app_id", "timestamp", "trace_id", "status", "latency_ms", "scores", "derived")


def assert_same(doc: TelemetryDocument) -> None:
    event = unpack(doc.app_id, pack(doc))
    for name in FIELDS:
        assert getattr(event, name) == getattr(doc, name), name
    # Equal instants are not enough: a breach carries the time as the event wrote it.
    assert event.timestamp.isoformat() == doc.timestamp.isoformat()
    assert (event.tokens is None) == (doc.tokens is None)
    assert type(event.status) is type(doc.status)


def test_every_field_the_hot_path_reads_round_trips_exactly() -> None:
    for doc in incident_stream()[:2000]:
        assert_same(doc)
    odd = document(7, latency_ms=None, error=True, tokens=False, scores={"x": 0.1 + 0.2})
    plus_two = timezone(timedelta(hours=2))
    shifted = odd.model_copy(
        update={"timestamp": datetime(2026, 12, 1, 13, 0, 0, 123456, tzinfo=plus_two)}
    )
    whole_second = odd.model_copy(update={"timestamp": datetime(2026, 12, 1, 13, 0, 0, tzinfo=UTC)})
    odd_offset = timezone(timedelta(hours=-9, minutes=-30))
    local = odd.model_copy(update={"timestamp": datetime(2026, 12, 1, 3, 30, 0, 5, odd_offset)})
    for doc in (odd, shifted, whole_second, local):
        assert_same(doc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
def test_every_document_the_pipeline_makes_round_trips(body: bytes) -> None:
    # Whatever the decoder accepts, at the edges of each field: the compact form takes it too
    # (token counts of 2**64 - 1 each make a total beyond what orjson writes).
    position = ReceivedEvent(body, "0", 1, NOW, "1")
    for accepted in Decoder().decode(body, NOW).accepted:
        assert_same(ENRICHER.document(accepted.event, position, accepted.index, NOW, False))


def test_a_token_total_beyond_64_bits_round_trips() -> None:
    tokens = Tokens(input=2**64 - 1, output=2**64 - 1)
    doc = document(1).model_copy(
        update={"tokens": tokens, "derived": DerivedSizes(tokens_total=2**65 - 2)}
    )
    assert_same(doc)
    assert unpack(doc.app_id, pack(doc)).derived.tokens_total == 2**65 - 2


def test_the_hot_path_finds_the_same_breaches_in_the_compact_form() -> None:
    compact = tuple(unpack(doc.app_id, pack(doc)) for doc in incident_stream())
    breaches = run(HotPath(AppDirectory()), compact)  # type: ignore[arg-type]
    expected = uninterrupted()[0]
    assert len(expected) >= 4  # the stream's incidents open and resolve
    assert breaches == list(expected)


async def test_an_app_is_read_back_in_the_order_the_live_processor_saw_it(tmp_path: Path) -> None:
    def at(i: int, seconds: float, partition: str) -> TelemetryDocument:
        doc = document(i, seconds=seconds)
        ingest = doc.ingest.model_copy(update={"partition": partition, "sequence": i})
        return doc.model_copy(update={"ingest": ingest, "id": f"doc-{partition}-{i}"})

    job = JobFile(tmp_path / "job.db")
    # One partition, an event arriving 30 s late: read where it arrived, as live.
    one = [at(0, 0, "0"), at(1, 40, "0"), at(2, 10, "0"), at(3, 50, "0")]
    await job.collect(one)
    assert [e.id for page in [p async for p in job.observed("app-a")] for e in page] == [
        d.id for d in one
    ]
    # The app's events from a second partition: no live order to follow, so event time
    # (ties in source order), read across pages.
    two = [at(0, 5, "1"), at(1, 45, "1")]
    await job.collect(two)
    pages = [page async for page in job.observed("app-a", page_size=2)]
    assert len(pages) == 3
    by_time = sorted(one + two, key=lambda d: (d.timestamp, d.ingest.partition))
    assert [e.id for page in pages for e in page] == [d.id for d in by_time]
    job.close()
