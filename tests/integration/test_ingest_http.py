"""HTTP ingest over a real socket: clear answers, quarantine of rejects, valid events appended.

On the embedded backend ingest logs what it rejects beside what it accepts, and the processor
makes the quarantine records as it reads the log (``Ingest.quarantine`` reads it as it does)."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from evalstream.ingest_pool import ingest_in_workers
from evalstream.settings import load_settings
from schemas import AppDirectory, QuarantineRecord, TelemetryEvent
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import INGEST_SOURCE, Enricher
from stream.exceptions import SourceError
from stream.ops import OpsRoutes
from stream.ports import REFUSED, Rejected
from stream.privacy import Pseudonymizer
from stream.producers.ingest import IngestApp
from stream.producers.ingest_server import bound_port, serving
from stream.sources.local_log import LocalLog, LocalLogSink
from stream.stats import ProcessorStats
from tests.unit.stream.test_logged_events import process_log

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
GOOD = {"app_id": "web-app", "timestamp": (NOW - timedelta(minutes=1)).isoformat(), "trace_id": "t"}


@dataclass
class Ingest:
    client: httpx.AsyncClient
    store: SqliteStore
    log_path: Path

    def logged(self) -> list[bytes]:
        """The events the log holds (not the inputs logged as refused)."""
        log = LocalLog(self.log_path, 2)
        try:
            return [
                event.body
                for p in range(2)
                for event in log.read(p, -1, 10_000)
                if event.user is None or event.user[0] != REFUSED
            ]
        finally:
            log.close()

    async def quarantine(self) -> list[QuarantineRecord]:
        """The quarantine records once the log is processed, as the processor would."""
        await process_log(self.log_path, self.store, Decoder(), 2)
        records = [record async for record in self.store.quarantine_records(limit=1000)]
        assert {record.source for record in records} <= {INGEST_SOURCE}
        return records


@pytest.fixture(params=["in-process", "worker-processes"])
async def ingest(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ingest]:
    """The app served in the test's own process, or as `process` runs it by default: in a worker
    process on the pool's port (one worker: the default on two cores), /healthz forwarded to the
    processor's routes."""
    if request.param == "worker-processes":
        async for served in _in_workers(tmp_path):
            yield served
        return
    decoder = Decoder(DecodeLimits(max_body_bytes=64 * 1024, max_events_per_body=20))
    enricher = Enricher(AppDirectory(), b"k", "ingest")
    # As the commands build it (evalstream.wiring.sink): no raw user id reaches the log.
    pseudonymizer = Pseudonymizer(decoder, Enricher(AppDirectory(), b"k", "local"))
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        LocalLogSink(tmp_path / "log.db", 2, pseudonymizer) as sink,
        serving(IngestApp(decoder, enricher, sink, store).app, "127.0.0.1", 0) as server,
    ):
        url = f"http://127.0.0.1:{bound_port(server)}"
        async with httpx.AsyncClient(base_url=url) as client:
            yield Ingest(client, store, tmp_path / "log.db")


async def _in_workers(data_dir: Path) -> AsyncIterator[Ingest]:
    settings = load_settings(
        embedded={"data_dir": data_dir, "partitions": 2},
        ingest={"max_request_bytes": 64 * 1024, "max_events_per_request": 20},
    )
    async with (
        SqliteStore(data_dir / "store.db") as store,
        ingest_in_workers(
            settings,
            1,
            0,
            OpsRoutes(ProcessorStats(), store).routes,
            CollectorRegistry(),
            lambda _: None,
        ) as pool,
    ):
        stop = asyncio.Event()
        running = asyncio.create_task(pool.run(stop))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{pool.port}") as client:
                yield Ingest(client, store, data_dir / "log.db")
        finally:
            stop.set()
            await running


async def test_one_valid_event_is_accepted_and_appended(ingest: Ingest) -> None:
    response = await ingest.client.post("/api/telemetry", content=orjson.dumps(GOOD))
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1 and body["rejected"] == []
    assert len(body["ids"]) == 1
    (logged,) = ingest.logged()
    assert orjson.loads(logged)["trace_id"] == "t"


async def test_a_body_after_a_byte_order_mark_is_read(ingest: Ingest) -> None:
    # PowerShell's Out-File and Notepad write one; NDJSON bodies were already read past it.
    plain = await ingest.client.post("/api/telemetry", content=orjson.dumps(GOOD))
    marked = await ingest.client.post(
        "/api/telemetry", content=b"\xef\xbb\xbf" + orjson.dumps([GOOD, GOOD])
    )
    assert marked.status_code == 202, marked.text
    assert marked.json()["ids"] == plain.json()["ids"] * 2


async def test_mixed_batch_reports_each_rejection_and_quarantines_it(ingest: Ingest) -> None:
    events = [GOOD, {**GOOD, "latency_ms": "slow"}, {**GOOD, "trace_id": "t2"}, 3]
    response = await ingest.client.post("/api/telemetry", content=orjson.dumps({"events": events}))
    assert response.status_code == 207
    body = response.json()
    assert body["accepted"] == 2
    assert [
        (r["index"], r["errors"][0]["code"], r["errors"][0]["location"]) for r in body["rejected"]
    ] == [
        (1, "float_parsing", "$.events[1].latency_ms"),
        (3, "not_an_object", "$.events[3]"),
    ]
    assert len(ingest.logged()) == 2
    assert len(await ingest.quarantine()) == 2


async def test_all_rejected_is_422(ingest: Ingest) -> None:
    naive = {**GOOD, "timestamp": "2026-11-22T10:00:00"}
    response = await ingest.client.post("/api/telemetry", content=orjson.dumps([naive]))
    assert response.status_code == 422
    assert response.json()["rejected"][0]["errors"][0]["code"] == "timezone_aware"
    assert ingest.logged() == []
    [record] = await ingest.quarantine()
    assert record.issues[0].code == "timezone_aware"


async def test_malformed_json_is_400_and_quarantined(ingest: Ingest) -> None:
    response = await ingest.client.post("/api/telemetry", content=b'{"app_id": ')
    assert response.status_code == 400
    assert response.json()["error"] == "malformed_json"
    records = await ingest.quarantine()
    assert records[0].raw == '{"app_id": '


async def test_invalid_utf8_is_400(ingest: Ingest) -> None:
    response = await ingest.client.post("/api/telemetry", content=b'{"app_id": "\xff"}')
    assert (response.status_code, response.json()["error"]) == (400, "invalid_utf8")


async def test_too_many_events_is_413(ingest: Ingest) -> None:
    response = await ingest.client.post("/api/telemetry", content=orjson.dumps([GOOD] * 21))
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_events"
    assert ingest.logged() == []
    assert len(await ingest.quarantine()) == 1


async def test_oversized_body_is_413_without_reading_it_all(ingest: Ingest) -> None:
    big = orjson.dumps({**GOOD, "output_text": "x" * 70_000})
    response = await ingest.client.post("/api/telemetry", content=big)
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"


async def test_deeply_nested_body_is_400(ingest: Ingest) -> None:
    response = await ingest.client.post("/api/telemetry", content=b"[" * 3000 + b"]" * 3000)
    assert (response.status_code, response.json()["error"]) == (400, "too_deeply_nested")


def deflated(data: bytes) -> bytes:
    return zlib.compress(data)


def raw_deflated(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", deflated), ("deflate", raw_deflated)],
    ids=["gzip", "deflate", "raw-deflate"],
)
async def test_a_compressed_body_is_read(
    ingest: Ingest, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    events = orjson.dumps([GOOD, {**GOOD, "trace_id": "t2"}])
    response = await ingest.client.post(
        "/api/telemetry", content=compress(events), headers={"content-encoding": encoding}
    )
    assert response.status_code == 202, response.text
    plain = await ingest.client.post("/api/telemetry", content=events)
    # The same events, the same ids, whichever way they came.
    assert response.json()["ids"] == plain.json()["ids"]
    assert sorted(orjson.loads(body)["trace_id"] for body in ingest.logged()) == [
        "t", "t", "t2", "t2"
    ]  # fmt: skip


async def test_a_body_too_large_once_decompressed_is_413_and_not_inflated_further(
    ingest: Ingest,
) -> None:
    # 64 KiB is the limit here; this is ~50 KB compressed, 50 MB of JSON once inflated.
    bomb = gzip.compress(orjson.dumps({**GOOD, "output_text": "x" * 50_000_000}))
    assert len(bomb) < 64 * 1024
    response = await ingest.client.post(
        "/api/telemetry", content=bomb, headers={"content-encoding": "gzip"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert "once decompressed" in response.json()["message"]
    assert ingest.logged() == []


async def test_a_corrupt_compressed_body_is_400_and_its_readable_part_quarantined(
    ingest: Ingest,
) -> None:
    # Cut short: what decompressed is kept (its user_id hashed like any input's); a body
    # labelled gzip that is plain JSON is kept as sent; compressed bytes that decompress to
    # nothing are not kept (a user_id in them could not be hashed), the reason is.
    sent = orjson.dumps([{**GOOD, "trace_id": f"t{n}", "user_id": "alice"} for n in range(20)])
    cut = gzip.compress(sent)[:-6]
    flipped = bytearray(gzip.compress(sent))
    flipped[-5] ^= 0xFF  # the stored length: every byte inflates, the check fails
    for body in (cut, orjson.dumps(GOOD), bytes(flipped)):
        response = await ingest.client.post(
            "/api/telemetry", content=body, headers={"content-encoding": "gzip"}
        )
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_content_encoding"
    records = sorted(await ingest.quarantine(), key=lambda r: r.raw)
    assert [r.issues[0].code for r in records] == ["invalid_content_encoding"] * 3
    nothing, readable, plain = records
    assert nothing.raw == ""
    assert readable.raw.startswith('[{"app_id"') and "alice" not in readable.raw
    assert readable.raw.count('"user_id":"') == 20  # every one there, hashed
    assert plain.raw == orjson.dumps(GOOD).decode()
    assert ingest.logged() == []


async def test_an_encoding_it_does_not_read_is_415_not_taken_as_plain(ingest: Ingest) -> None:
    # Labelled br but sent plain: before, it was accepted as if there were no label.
    response = await ingest.client.post(
        "/api/telemetry", content=orjson.dumps(GOOD), headers={"content-encoding": "br"}
    )
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported_content_encoding"
    assert "gzip or deflate" in response.json()["message"]
    assert ingest.logged() == []


async def test_every_content_encoding_header_counts(ingest: Ingest) -> None:
    # Two header lines are one list (RFC 9110 5.3): only the first was read, so a body labelled
    # br on the second line was taken as plain, and one gzipped was refused as not UTF-8.
    plain = orjson.dumps(GOOD)
    labelled_br = await ingest.client.post(
        "/api/telemetry",
        content=plain,
        headers=[("content-encoding", "identity"), ("content-encoding", "br")],
    )
    assert labelled_br.status_code == 415
    gzipped = await ingest.client.post(
        "/api/telemetry",
        content=gzip.compress(plain),
        headers=[("content-encoding", "identity"), ("content-encoding", "gzip")],
    )
    assert gzipped.status_code == 202
    assert len(ingest.logged()) == 1


@pytest.mark.parametrize("content_type", ["application/x-ndjson", "application/jsonl"])
async def test_an_ndjson_body_is_read_line_by_line(ingest: Ingest, content_type: str) -> None:
    events = [GOOD, {**GOOD, "latency_ms": "slow"}, {**GOOD, "trace_id": "t2"}]
    # A byte order mark, CRLF endings and a blank line, as `send` reads a file.
    body = b"\xef\xbb\xbf" + b"\r\n".join(orjson.dumps(e) for e in events) + b"\r\n\r\n"
    response = await ingest.client.post(
        "/api/telemetry", content=body, headers={"content-type": content_type}
    )
    assert response.status_code == 207, response.text
    answer = response.json()
    assert answer["accepted"] == 2
    assert [(r["index"], r["errors"][0]["code"]) for r in answer["rejected"]] == [
        (1, "float_parsing")
    ]
    # The same documents as the same events posted as an array.
    as_array = await ingest.client.post("/api/telemetry", content=orjson.dumps(events))
    assert as_array.json()["ids"] == answer["ids"]
    (record,) = (await ingest.quarantine())[:1]
    assert orjson.loads(record.raw)["latency_ms"] == "slow"


async def test_an_ndjson_body_over_the_event_limit_is_413_before_it_is_read(
    ingest: Ingest,
) -> None:
    body = b"\n".join([orjson.dumps(GOOD)] * 21)  # the limit here is 20
    response = await ingest.client.post(
        "/api/telemetry", content=body, headers={"content-type": "application/x-ndjson"}
    )
    assert response.status_code == 413
    assert response.json()["error"] == "too_many_events"
    assert ingest.logged() == []


async def test_health(ingest: Ingest) -> None:
    response = await ingest.client.get("/healthz")
    assert response.json() == {"status": "ok"}


async def test_health_answers_a_client_that_half_closes(ingest: Ingest) -> None:
    # As a health check by `printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc -N host port`: in a
    # worker process /healthz is forwarded, and the half-close closed the connection first.
    url = ingest.client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'\r\n\r\n{"status":"ok"}')


@pytest.mark.parametrize(
    "body",
    [
        b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","metadata":{"x":NaN}}',
        b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t","latency_ms":1e400}',
        b'{"app_id":"a","timestamp":"0001-01-01T00:00:00+05:00","trace_id":"t"}',
        b'{"app_id":"a","timestamp":"0001-01-01T00:00:00Z","trace_id":"t"}',
        b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","tokens":{"input":99999999999999999999}}',
        b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","x":' + b"[" * 600 + b"]" * 600 + b"}",
        b'{"events":[{"app_id":"a"}],"more":true}',
    ],
)
async def test_values_nothing_later_could_keep_are_4xx_and_quarantined(
    ingest: Ingest, body: bytes
) -> None:
    response = await ingest.client.post("/api/telemetry", content=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["accepted"] == 0
    assert ingest.logged() == []
    assert len(await ingest.quarantine()) == 1


async def test_two_equal_invalid_events_of_one_request_are_two_records(ingest: Ingest) -> None:
    bad = {"app_id": "a", "timestamp": "not a time", "trace_id": "t"}
    body = orjson.dumps({"events": [bad, bad]})
    for _ in range(2):  # the same request again lands on the same records
        response = await ingest.client.post("/api/telemetry", content=body)
        assert response.status_code == 422
        assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    assert len(await ingest.quarantine()) == 2


class FullSink:
    """A log on a full disk: every append fails as the embedded log reports it."""

    logs_refusals = True

    async def append(
        self,
        bodies: list[tuple[str | None, bytes]],
        validated: Sequence[tuple[TelemetryEvent, str]] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> None:
        raise SourceError("append to the event log: database or disk is full", retryable=True)


async def test_a_log_that_cannot_take_events_is_503_with_retry_after(tmp_path: Path) -> None:
    enricher = Enricher(AppDirectory(), b"k", "ingest")
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        serving(IngestApp(Decoder(), enricher, FullSink(), store).app, "127.0.0.1", 0) as server,  # type: ignore[arg-type]
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(server)}") as client,
    ):
        response = await client.post("/api/telemetry", json=GOOD)
        # Its rejected inputs go with its events: nothing of the request is kept.
        mixed = await client.post("/api/telemetry", json=[GOOD, {"app_id": "a"}])
        assert await store.count("quarantine") == 0
    for answer in (response, mixed):
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "5"
        assert answer.json()["error"] == "unavailable"
        assert "disk is full" in answer.json()["message"]
