"""Records ingest wrote to the embedded log for events it validated are rebuilt by the processor
without validating them again (``Decoder.logged_event``): the stored documents must be byte for
byte those the raw bodies give, and anything not in that form must be decoded as before.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import AppDirectory, TelemetryEvent
from store.sqlite import SqliteStore
from stream.decode import Decoded, Decoder
from stream.enrich import Enricher, sent_form
from stream.pipeline import Pipeline
from stream.ports import ReceivedEvent
from stream.privacy import Pseudonymizer
from stream.sources.local_log import LocalLog, LocalLogSink
from stream.stats import ProcessorStats
from tests.unit.stream.event_bodies import bodies
from tests.unit.stream.test_output_golden import APPS, _bodies
from tests.unit.stream.test_pipeline import Context

KEY = b"test-key"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def _typed(event: TelemetryEvent) -> list[tuple[str, type, Any]]:
    """Every field in order with its value's type: equal values of other types (1 and 1.0,
    a dict and a model) would serialise differently."""
    return [(name, type(value), value) for name, value in event.__dict__.items()]


def _record(event: TelemetryEvent, enricher: Enricher) -> tuple[bytes, tuple[str, str] | None]:
    """The log record ingest makes of a validated event."""
    body, id_ = sent_form(event)
    pseudonymizer = Pseudonymizer(Decoder(), enricher)
    [(_, logged, user)] = pseudonymizer.validated_items([(event.app_id, body)], [(event, id_)])
    return logged, user


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
def test_a_logged_event_is_the_event_its_body_validates_to(body: bytes) -> None:
    decoder, enricher = Decoder(), Enricher(AppDirectory(), KEY, "local")
    for accepted in decoder.decode(body, NOW).accepted:
        logged, user = _record(accepted.event, enricher)
        assert user is not None and user[1]
        rebuilt = decoder.logged_event(logged, NOW)
        if rebuilt is None:
            # Only what orjson cannot read back (a lone surrogate, written by pydantic).
            assert b"\\ud" in logged.lower()
            continue
        [validated] = decoder.decode(logged, NOW).accepted
        assert _typed(rebuilt) == _typed(validated.event)
        position = ReceivedEvent(body, "3", 7, NOW, "7")
        raw = enricher.document(accepted.event, position, 0, NOW, False)
        fast = enricher.document(rebuilt, replace(position, user=user), 0, NOW, False, logged)
        assert fast.json_bytes() == raw.json_bytes()
        assert fast.id == raw.id and fast.user_hash == raw.user_hash


def test_the_generated_bodies_give_logged_events_with_and_without_users() -> None:
    seen = {"with user": 0, "without": 0}

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(body=bodies())
    def tally(body: bytes) -> None:
        decoder, enricher = Decoder(), Enricher(AppDirectory(), KEY, "local")
        for accepted in decoder.decode(body, NOW).accepted:
            logged, _ = _record(accepted.event, enricher)
            if decoder.logged_event(logged, NOW) is not None:
                seen["with user" if accepted.event.user_id else "without"] += 1

    tally()
    assert all(count > 10 for count in seen.values()), seen


def test_records_not_in_the_logged_form_are_left_to_the_decoder() -> None:
    decoder, enricher = Decoder(), Enricher(AppDirectory(), KEY, "local")
    event = (
        decoder.decode(
            b'{"app_id":"a","timestamp":"2026-11-22T11:00:00Z","trace_id":"t","user_id":"u"}', NOW
        )
        .accepted[0]
        .event
    )
    logged, _ = _record(event, enricher)
    assert decoder.logged_event(logged, NOW) is not None
    # A record of an older version: defaults left out.
    assert decoder.logged_event(event.model_dump_json(exclude_defaults=True).encode(), NOW) is None
    # Not an object, another field order, an unknown status or schema version.
    assert decoder.logged_event(b"[1]", NOW) is None
    assert decoder.logged_event(b"{", NOW) is None
    reordered = logged.replace(b'"schema_version":1,', b"").replace(b"}", b',"schema_version":1}')
    assert decoder.logged_event(reordered, NOW) is None
    assert decoder.logged_event(logged.replace(b'"ok"', b'"OK"'), NOW) is None
    assert (
        decoder.logged_event(logged.replace(b'"schema_version":1', b'"schema_version":2'), NOW)
        is None
    )
    # The checks that depend on settings still run: the future skew counts from the enqueued
    # time, as in the decoder, and the body size limit holds.
    for enqueued, kept in (
        (datetime(2026, 11, 22, 10, 44, 59, tzinfo=UTC), False),
        (datetime(2026, 11, 22, 10, 45, tzinfo=UTC), True),
    ):
        assert (decoder.logged_event(logged, enqueued) is not None) is kept
        assert bool(decoder.decode(logged, enqueued).accepted) is kept
    strict = Decoder(replace(decoder.limits, max_future_skew=timedelta(0)))
    assert strict.logged_event(logged, datetime(2026, 11, 22, 10, 59, tzinfo=UTC)) is None
    small = Decoder(replace(decoder.limits, max_body_bytes=len(logged) - 1))
    assert small.logged_event(logged, NOW) is None


class CountingDecoder(Decoder):
    """Counts the bodies validated in full (the common shape's reading, or else decode) and
    the records rebuilt without."""

    def __init__(self) -> None:
        super().__init__()
        self.decoded = self.rebuilt = 0

    def common_event(self, body: bytes, now: datetime) -> TelemetryEvent | None:
        event = super().common_event(body, now)
        self.decoded += event is not None
        return event

    def decode(self, body: bytes, now: datetime | None = None, *, common: bool = True) -> Decoded:
        self.decoded += 1
        return super().decode(body, now, common=common)

    def logged_event(self, body: bytes, enqueued: datetime) -> TelemetryEvent | None:
        event = super().logged_event(body, enqueued)
        self.rebuilt += event is not None
        return event


async def process_log(
    log_path: Path,
    store: SqliteStore,
    decoder: Decoder,
    partitions: int = 4,
    stats: ProcessorStats | None = None,
) -> None:
    """Every record of the log at ``log_path`` through a Pipeline into ``store``."""
    log = LocalLog(log_path, partitions)
    pipeline = Pipeline(
        store=store,
        decoder=decoder,
        enricher=Enricher(APPS, KEY, "local"),
        consumer_group="$Default",
        # Every event on time whatever its partition's order.
        lateness=timedelta(days=3650),
        checkpoint_interval_s=0,
        stats=stats or ProcessorStats(),
    )
    try:
        for partition in range(partitions):
            context = Context(partition_id=str(partition))
            await pipeline.on_partition_initialize(context)
            # A source hands no empty batches (a few events leave partitions empty).
            if events := log.read(partition, -1, 100_000):
                await pipeline.on_batch(context, events)
    finally:
        log.close()


async def _processed(log_path: Path, store_path: Path) -> tuple[dict[str, bytes], CountingDecoder]:
    """Every record of the log through a Pipeline into a store: the stored documents by id,
    without their ingest positions (the two logs place the events differently)."""
    decoder = CountingDecoder()
    documents: dict[str, bytes] = {}
    async with SqliteStore(store_path) as store:
        await process_log(log_path, store, decoder)
        for pk, id_ in await store.telemetry_ids():
            doc = await store.get_telemetry(id_, pk)
            assert doc is not None
            stored = doc.json_bytes()
            documents[id_] = stored[: stored.index(b',"ingest":')]
    return documents, decoder


async def test_ingest_records_are_stored_as_their_raw_bodies_are(tmp_path: Path) -> None:
    """The simulator's events (a tenth invalid, many with a user_id) and the edge bodies: once
    as producers' raw bodies, once as ingest logs the ones it accepts."""
    raw_bodies = list(_bodies())
    enricher, decoder = Enricher(APPS, KEY, "local"), Decoder()
    now = datetime.now(UTC)  # as ingest decides, at the time it receives
    accepted = [a.event for body in raw_bodies for a in decoder.decode(body, now).accepted]
    assert sum(event.user_id is not None for event in accepted) > 50
    sent = [sent_form(event) for event in accepted]
    async with LocalLogSink(tmp_path / "raw.db", 4) as sink:
        await sink.append([(None, body) for body in raw_bodies])
    async with LocalLogSink(tmp_path / "ingest.db", 4, Pseudonymizer(Decoder(), enricher)) as sink:
        await sink.append(
            [(event.app_id, body) for event, (body, _) in zip(accepted, sent, strict=True)],
            [(event, id_) for event, (_, id_) in zip(accepted, sent, strict=True)],
        )

    from_raw, raw_decoder = await _processed(tmp_path / "raw.db", tmp_path / "a.db")
    from_ingest, ingest_decoder = await _processed(tmp_path / "ingest.db", tmp_path / "b.db")

    assert raw_decoder.rebuilt == 0 and raw_decoder.decoded == len(raw_bodies)
    # Every record ingest wrote was rebuilt, none validated again.
    assert ingest_decoder.decoded == 0 and ingest_decoder.rebuilt == len(accepted)
    assert len(from_ingest) > 1000
    assert from_ingest == from_raw


# A metadata.user_id of each kind a producer may send, JSON text included for the hash.
_METADATA_USERS = (
    st.text(min_size=1, max_size=12)
    | st.integers(-(2**63), 2**63 - 1)
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies(), user=_METADATA_USERS)
def test_a_logged_event_with_a_metadata_user_id_gives_the_raw_bodys_document(
    body: bytes, user: str | int | bool | float
) -> None:
    """The generated bodies with a metadata.user_id: the document the raw body gives holds the
    user's keyed hash, and the record ingest logs gives it byte for byte, on the id ingest
    answered (made from the event as sent)."""
    parsed = json.loads(body)
    if isinstance(parsed, dict):
        metadata = parsed.get("metadata")
        parsed["metadata"] = {
            **(metadata if isinstance(metadata, dict) else {}),
            "user_id": user,
        }
    decoder, enricher = Decoder(), Enricher(AppDirectory(), KEY, "local")
    for accepted in decoder.decode(json.dumps(parsed).encode(), NOW).accepted:
        value = accepted.event.metadata["user_id"]
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        logged, pair = _record(accepted.event, enricher)
        assert pair is not None and pair[1] == sent_form(accepted.event)[1]
        position = ReceivedEvent(body, "3", 7, NOW, "7")
        raw = enricher.document(accepted.event, position, 0, NOW, False)
        assert raw.metadata["user_id"] == enricher.user_hash(text)
        assert raw.id == pair[1]
        rebuilt = decoder.logged_event(logged, NOW)
        if rebuilt is None:
            # Only what orjson cannot read back (a lone surrogate, written by pydantic).
            assert b"\\ud" in logged.lower()
            continue
        fast = enricher.document(rebuilt, replace(position, user=pair), 0, NOW, False, logged)
        assert fast.json_bytes() == raw.json_bytes()
