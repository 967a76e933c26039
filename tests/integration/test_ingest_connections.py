"""Ingest under slow, stalled and half-closed clients, over a real socket; and a taken port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from common.log_context import ContextFilter
from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.exceptions import StreamError
from stream.producers.ingest import IngestApp
from stream.producers.ingest_server import bound_port, serving
from stream.sources.local_log import LocalLogSink

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.5
GOOD = orjson.dumps(
    {
        "app_id": "web-app",
        "timestamp": (datetime.now(UTC) - timedelta(minutes=1)).isoformat(),
        "trace_id": "t",
    }
)


@dataclass
class Server:
    port: int
    store: SqliteStore

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def post_good(self) -> int:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}") as client:
            return (await client.post("/api/telemetry", content=GOOD)).status_code


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    app = IngestApp(
        Decoder(DecodeLimits(max_body_bytes=64 * 1024, max_events_per_body=20)),
        Enricher(AppDirectory(), b"k", "ingest"),
        sink := LocalLogSink(tmp_path / "log.db", 2),
        store := SqliteStore(tmp_path / "store.db"),
        body_timeout_s=TIMEOUT_S,
    )
    async with (
        store,
        sink,
        serving(app.app, "127.0.0.1", 0, header_timeout_s=TIMEOUT_S) as running,
    ):
        yield Server(bound_port(running), store)


async def _trickle(
    writer: asyncio.StreamWriter, data: bytes, reader: asyncio.StreamReader
) -> bytes:
    """Send ``data`` a byte every 50 ms until the server answers or closes; return its answer."""
    for byte in data:
        if reader.at_eof():
            break
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        try:
            return await asyncio.wait_for(reader.read(), 0.05)
        except TimeoutError:
            continue
    return await asyncio.wait_for(reader.read(), 10)


async def test_headers_sent_a_byte_at_a_time_are_cut_off_while_others_are_served(
    server: Server,
) -> None:
    reader, writer = await server.connect()
    headers = b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\n" + b"x-padding: " + b"p" * 400
    started = time.monotonic()
    slow = asyncio.create_task(_trickle(writer, headers, reader))
    assert await server.post_good() == 202
    answer = await slow
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert TIMEOUT_S <= elapsed < 10  # the whole header would take 20 s at this pace
    writer.close()


async def test_a_body_sent_a_byte_at_a_time_is_answered_408(server: Server) -> None:
    reader, writer = await server.connect()
    body = GOOD * 10
    writer.write(
        b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    started = time.monotonic()
    answer = await _trickle(writer, body, reader)
    elapsed = time.monotonic() - started
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert orjson.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "body_timeout"
    assert TIMEOUT_S <= elapsed < 10
    assert await server.store.count("telemetry") == 0
    writer.close()


async def test_a_half_closed_short_body_is_answered_and_nothing_is_kept(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reader, writer = await server.connect()
    writer.write(
        b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % (len(GOOD) * 3)
        + GOOD
    )
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"request body ended before its declared Content-Length" in answer
    assert await server.post_good() == 202  # the server goes on
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert await server.store.count("quarantine") == 0
    writer.close()


@pytest.mark.parametrize(("path", "status"), [("/api/telemetry", 413), ("/nowhere", 404)])
async def test_the_rest_of_a_body_answered_before_its_end_is_not_waited_for(
    server: Server, path: str, status: int
) -> None:
    # Answered at its headers, the body was still read (and thrown away) with no deadline: a
    # client sending a byte now and then held the connection as long as it liked.
    reader, writer = await server.connect()
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n" % path.encode()
    )
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 %d " % status)
    started = time.monotonic()
    while not reader.at_eof() and time.monotonic() - started < 5:
        try:
            writer.write(b"x")
            await writer.drain()
        except ConnectionError:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.read(1024), 0.05)
    assert time.monotonic() - started < 5
    assert await server.post_good() == 202  # the server goes on
    writer.close()


async def test_a_request_with_both_content_length_and_chunks_is_400_and_ends_the_connection(
    server: Server,
) -> None:
    # Read as chunked and kept alive, what followed was taken for a next request: a proxy that
    # goes by the Content-Length sees other requests than we do (request smuggling).
    reader, writer = await server.connect()
    writer.write(
        b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (len(GOOD), GOOD)
        + b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1 ") == 1
    assert b"connection: close\r\n" in answer.lower()
    assert await server.post_good() == 202


async def test_a_client_that_reads_none_of_its_answer_is_cut_off() -> None:
    # A client asking and never reading (or pipelining requests it never reads the answers to)
    # held the connection, the task and every byte buffered for it for ever.
    finished = asyncio.Event()

    async def big(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # More than the sockets' buffers hold: the rest waits in ours, the next send for room.
        await send({"type": "http.response.body", "body": b"x" * 16_000_000, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        finished.set()

    async with serving(big, "127.0.0.1", 0, header_timeout_s=TIMEOUT_S) as running:
        with socket.socket() as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.connect(("127.0.0.1", bound_port(running)))
            client.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            started = time.monotonic()
            await asyncio.wait_for(finished.wait(), 10)
            assert TIMEOUT_S <= time.monotonic() - started < 10
            assert not running.server_state.connections


@pytest.mark.parametrize(
    ("sent", "half_close", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", False, 400),
        (b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\ncontent-length: 9\r\n\r\n{", True, 400),
        (b"POST /api/telemetry HTTP/1.1\r\nhost: x\r\n", False, 408),
    ],
)
async def test_the_servers_own_answers_say_nosniff_too(
    server: Server, sent: bytes, half_close: bool, status: int
) -> None:
    # Answers the app never sees (a request h11 refuses, late headers, a short body) lacked it.
    reader, writer = await server.connect()
    writer.write(sent)
    if half_close:
        writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = answer.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 %d " % status)
    assert b"\r\nx-content-type-options: nosniff" in head


@pytest.mark.parametrize("path", ["/api/telemetry", "/nowhere"])
async def test_a_broken_chunk_near_an_answer_logs_no_traceback(
    server: Server, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    # h11 answers a broken chunk 400 itself: while the app was answering too (404 at once), the
    # app's answer met h11's refusal; after the app had answered (404, 413 over the limit), the
    # 400 did: each an error with a traceback in the log.
    caplog.set_level(logging.INFO)
    head = b"POST %s HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" % path.encode()
    reader, writer = await server.connect()
    writer.write(head + b"5\r\nhello\r\nzz\r\n")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 4")
    writer.close()
    reader, writer = await server.connect()
    writer.write(head + b"%x\r\n%s\r\n" % (70_000, b"x" * 70_000))
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 4")
    writer.write(b"zz\r\n")
    await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert await server.post_good() == 202
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_complete_request_then_a_half_close_is_answered() -> None:
    # A client that stops sending once its request is out (`nc -N`, some HTTP/1.0 clients)
    # still reads the answer: the half-close closed the connection and the answer was dropped.
    released = asyncio.Event()

    async def slow(request: Request) -> Response:
        await released.wait()
        return PlainTextResponse("answered")

    async def fast(request: Request) -> Response:
        return PlainTextResponse("fast")

    app = Starlette(routes=[Route("/slow", slow), Route("/fast", fast)])
    async with serving(app, "127.0.0.1", 0) as running:
        port = bound_port(running)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        writer.write_eof()
        # Another client answered: the server's loop has polled the half-closed one since.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/fast")).text == "fast"
        released.set()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nanswered")


async def test_a_taken_port_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(StreamError, match=rf"ingest cannot listen on 127\.0\.0\.1:{port}: "):
            async with serving(object(), "127.0.0.1", port):
                pass


async def test_a_request_id_is_echoed_and_on_the_lines_logged_while_answering(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    caplog.handler.addFilter(ContextFilter())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
        given = await client.post(
            "/api/telemetry", content=b"[1]", headers={"x-request-id": "abc-123"}
        )
        made = await client.post("/api/telemetry", content=GOOD)
        unsafe = await client.post("/api/telemetry", content=GOOD, headers={"x-request-id": "a b"})
    assert given.headers["x-request-id"] == "abc-123"
    assert len(made.headers["x-request-id"]) == 32
    assert unsafe.headers["x-request-id"] not in ("a b", made.headers["x-request-id"])
    # An answer may quote what was sent (an error in text/plain): no browser reads it as HTML.
    assert {r.headers["x-content-type-options"] for r in (given, made, unsafe)} == {"nosniff"}
    rejected = [r for r in caplog.records if r.getMessage() == "ingest rejected events"]
    assert [getattr(r, "request_id", None) for r in rejected] == ["abc-123"]
