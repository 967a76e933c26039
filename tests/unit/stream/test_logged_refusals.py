"""An input the embedded log keeps scrubbed (its user ids hashed) is decided as it was sent:
the same documents and the same quarantine records (issues, app) as the raw bytes give, never
the decision of the scrubbed bytes, which can differ (a user_id of 42 becomes a hash, a valid
string) — so ``send`` and HTTP ingest, which decides the raw bytes, agree."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from schemas import QuarantineRecord
from store.sqlite import SqliteStore
from stream.decode import Decoder, refusal, refusal_text
from stream.enrich import INGEST_SOURCE, Enricher, request_record_id, sent_form
from stream.privacy import Pseudonymizer
from stream.sources.local_log import LocalLog, LocalLogSink
from stream.stats import ProcessorStats
from tests.unit.stream.test_logged_events import process_log
from tests.unit.stream.test_output_golden import APPS, NOW

KEY = b"test-key"
PARTITIONS = 2
WHEN = NOW - timedelta(minutes=5)


def _event(trace: str, **fields: object) -> dict[str, object]:
    return {"app_id": "app-1", "timestamp": WHEN.isoformat(), "trace_id": trace, **fields}


def _line(value: object) -> bytes:
    return orjson.dumps(value)


def _nested(depth: int) -> str:
    return "[" * depth + "0" + "]" * depth


# Inputs whose user ids make the log keep them scrubbed, each a case of a decision the
# scrubbed bytes would change: a user_id value that is invalid only as sent (not a string,
# empty, too long, a list, an object), a valid event beside a sibling nested too deeply to be
# written alone, a body rejected whole, a metadata.user_id the model refuses.
BODIES = [
    _line(_event("t-int", user_id=42)),
    _line(_event("t-bool", user_id=True)),
    _line(_event("t-empty", user_id="")),
    _line(_event("t-long", user_id="u" * 300)),
    _line(_event("t-list", user_id=["alice", "bob"])),
    _line(_event("t-object", user_id={"id": "carol"})),
    _line(_event("t-meta-null", metadata={"user_id": None})),
    _line([_event("t-ok", user_id="dave"), _event("t-bad", user_id=7, latency_ms=-1)]),
    (
        b'[{"app_id":"app-1","timestamp":"' + WHEN.isoformat().encode() + b'",'
        b'"trace_id":"t-beside-deep","user_id":"erin"},'
        b'{"app_id":"app-1","timestamp":"' + WHEN.isoformat().encode() + b'",'
        b'"trace_id":"t-deep","metadata":{"x":' + _nested(300).encode() + b"}}]"
    ),
    _line({"events": [_event("t-envelope", user_id="frank")], "source": "web"}),
    b'{"app_id":"app-1","trace_id":"t-cut","user_id":"grace',
    _line(_event("t-valid", user_id="heidi")),
]


async def _outcome(
    bodies: list[bytes], tmp_path: Path, name: str, pseudonymizer: Pseudonymizer | None
) -> tuple[list[bytes], list[tuple[object, ...]]]:
    """The stored documents (without their log position) and quarantine records (issues, app)
    of the bodies logged through ``pseudonymizer`` (None: as sent) and processed."""
    async with LocalLogSink(tmp_path / f"{name}.db", PARTITIONS, pseudonymizer) as sink:
        await sink.append([(None, body) for body in bodies])
    documents: list[bytes] = []
    records: list[QuarantineRecord] = []
    async with SqliteStore(tmp_path / f"{name}-store.db") as store:
        await process_log(tmp_path / f"{name}.db", store, Decoder(), PARTITIONS)
        for pk, id_ in await store.telemetry_ids():
            doc = await store.get_telemetry(id_, pk)
            assert doc is not None
            stored = doc.json_bytes()
            documents.append(stored[: stored.index(b',"ingest":')])
        records = [record async for record in store.quarantine_records(limit=1000)]
    decided = [
        (
            record.app_id,
            tuple((issue.code, issue.location, issue.message) for issue in record.issues),
        )
        for record in records
    ]
    return sorted(documents), sorted(decided, key=repr)


async def test_inputs_logged_scrubbed_are_decided_as_they_were_sent(tmp_path: Path) -> None:
    enricher = Enricher(APPS, KEY, "local")
    as_sent = await _outcome(BODIES, tmp_path, "raw", None)
    scrubbed = await _outcome(BODIES, tmp_path, "kept", Pseudonymizer(Decoder(), enricher))

    documents, records = as_sent
    # The valid events (t-ok, t-beside-deep, t-valid) stored, each once; every other input
    # quarantined: nothing the scrubbing made valid is stored.
    traces = sorted(orjson.loads(doc + b"}")["trace_id"] for doc in documents)
    assert traces == ["t-beside-deep", "t-ok", "t-valid"]
    assert len(records) == len(BODIES) - 1  # all but the last hold a rejected input
    assert scrubbed == as_sent


@pytest.mark.parametrize("user_id", [42, True, "", "u" * 300, ["a", "b"], {"id": "c"}])
async def test_send_refuses_what_http_refuses(tmp_path: Path, user_id: object) -> None:
    """A user_id the model refuses is refused through the log too, for the same reason."""
    body = _line(_event("t-1", user_id=user_id))
    expected = Decoder().decode(body, NOW).rejected
    assert expected
    enricher = Enricher(APPS, KEY, "local")
    documents, records = await _outcome(
        [body], tmp_path, "kept", Pseudonymizer(Decoder(), enricher)
    )
    assert documents == []
    assert [codes for _, codes in records] == [
        tuple((issue.code, issue.location, issue.message) for issue in expected[0].issues)
    ]


async def test_inputs_ingest_refused_are_logged_and_quarantined_under_the_ids_ingest_gave(
    tmp_path: Path,
) -> None:
    """HTTP ingest logs what it refuses (beside what it accepts, in one append) with the id
    of each record — the one it gave the records it wrote itself — and counts them: the
    processor makes the records from the log under those ids, and counts none of them."""
    enricher = Enricher(APPS, KEY, "local")
    body = _line([_event("t-ok"), _event("t-bad", user_id="alice", latency_ms=-1), 3])
    decoded = Decoder().decode(body, NOW)
    named = [replace(r, record_id=request_record_id(body, r.index)) for r in decoded.rejected]
    direct = [enricher.quarantine(r, None, NOW, origin=body) for r in decoded.rejected]
    async with LocalLogSink(
        tmp_path / "log.db", PARTITIONS, Pseudonymizer(Decoder(), enricher)
    ) as sink:
        assert sink.logs_refusals
        [accepted] = decoded.accepted
        sent, id_ = sent_form(accepted.event)
        await sink.append([("app-1", sent)], [(accepted.event, id_)], named)
    log = LocalLog(tmp_path / "log.db", PARTITIONS)
    try:
        logged = [event for p in range(PARTITIONS) for event in log.read(p, -1, 100)]
    finally:
        log.close()
    assert b"alice" not in b"".join(event.body for event in logged)
    stats = ProcessorStats()
    async with SqliteStore(tmp_path / "store.db") as store:
        await process_log(tmp_path / "log.db", store, Decoder(), PARTITIONS, stats)
        assert await store.count("telemetry") == 1
        records = sorted(
            [record async for record in store.quarantine_records()], key=lambda r: r.id
        )
    assert [r.id for r in records] == sorted(r.id for r in direct)
    assert {r.source for r in records} == {INGEST_SOURCE}
    assert all(r.partition is not None and r.sequence is not None for r in records)
    by_id = {r.id: r for r in direct}
    assert [(r.issues, r.app_id, r.raw) for r in records] == [
        (by_id[r.id].issues, by_id[r.id].app_id, by_id[r.id].raw) for r in records
    ]
    assert (stats.documents, stats.quarantined) == (1, 0)


def test_a_refusal_is_logged_with_its_record_id_only_when_ingest_gave_one() -> None:
    [rejected] = Decoder().decode(b"[1]", NOW).rejected
    text = refusal_text(rejected)
    assert "record_id" not in text  # send's records as before
    assert refusal(text, rejected.raw) == rejected
    named = replace(rejected, record_id="r-1")
    assert refusal(refusal_text(named), rejected.raw) == named
