"""Serving the ingest app: a socket we bind ourselves and an HTTP protocol with read deadlines.

uvicorn reads request headers without a deadline and closes a half-closed connection without an
answer, so one slow or broken client holds a connection (and a task) for as long as it likes.
``TimedH11Protocol`` adds the two missing rules:

* headers must be complete ``header_timeout_s`` after their first byte (or after the connection
  opens); otherwise the connection is answered 408 and closed;
* a client that half-closes while its body is shorter than its ``Content-Length`` is answered 400
  before the connection closes, and the app sees a disconnect; one that half-closes after a
  complete request (``nc -N``, some HTTP/1.0 clients) gets its answer, and those of the requests
  it pipelined before, then the connection closes (uvicorn closed it at once, dropping them);
* a request answered before its body ended (401, 404, 413 at its headers) has as long as headers
  have to send the rest, which is thrown away; then the connection closes (uvicorn read it with
  no deadline: a byte now and then held the connection for ever);
* an answer the client does not read: once the socket takes no more of it, the client has
  ``header_timeout_s`` to read some, again and again, or the connection is aborted (uvicorn
  waited for room for ever: a client that never read held the connection, its task and every
  byte buffered for it);
* a request with both ``Content-Length`` and ``Transfer-Encoding`` is answered 400 and the
  connection closed (RFC 9112 §6.1: h11 read it as chunked and kept the connection, so a proxy
  going by the ``Content-Length`` would see other requests than we do).

The body's own deadline is the app's (``ingest.read_limited``): it knows which request it is
answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from stream.exceptions import StreamError

_LATE_BODY = b"request headers not complete in time"
# As every answer of the app (ingest.RequestIds): what is text stays text.
_NOSNIFF = (b"x-content-type-options", b"nosniff")
_HEADERS_LATE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\n%s: %s\r\ncontent-length: %d\r\n\r\n%s"
    % (*_NOSNIFF, len(_LATE_BODY), _LATE_BODY)
)


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and an answer for half-closed bodies."""

    header_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._client_done = False  # the client half-closed: close once nothing is left to answer

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:
            self._arm_header_deadline()  # the first byte of a next request on a kept connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and not self._answered_early():
            self._disarm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_deadline()
        self._disarm_write_deadline()
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        self._arm_write_deadline()

    def resume_writing(self) -> None:
        self._disarm_write_deadline()
        super().resume_writing()

    def _arm_write_deadline(self) -> None:
        self._disarm_write_deadline()
        self._write_deadline = self.loop.call_later(
            self.header_timeout_s, self._write_late, self.transport.get_write_buffer_size()
        )

    def _disarm_write_deadline(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None

    def _write_late(self, buffered: int) -> None:
        self._write_deadline = None
        if self.transport.get_write_buffer_size() < buffered:
            self._arm_write_deadline()  # a slow reader, but a reader
        else:
            self.transport.abort()

    def eof_received(self) -> bool | None:  # type: ignore[override]  # True: keep writing
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            return None  # nothing to answer: the transport closes
        if not cycle.response_started and self.conn.their_state is h11.SEND_BODY:
            self.send_400_response("request body ended before its declared Content-Length")
            return None
        # The request is complete: the client only stopped sending. Keep the transport open
        # for writing; on_response_complete closes it once the answers are written.
        self._client_done = True
        return True

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a request h11 refuses (a broken chunk, say), which may come while
        the app answers or after it has: the app then sees a disconnect, and the connection
        closes without a 400 once an answer has begun (h11 refused either second answer, an
        error with a traceback in the log)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            # uvicorn's 400 with the header every answer carries.
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"connection", b"close"),
                _NOSNIFF,
            ]
            answer = h11.Response(status_code=400, headers=headers, reason="Bad Request")
            body = h11.Data(data=msg.encode("ascii"))
            for event in (answer, body, h11.EndOfMessage()):
                self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self._client_done and self.cycle is not None and self.cycle.response_complete:
            self.transport.close()
        elif self._answered_early() and not self.transport.is_closing():
            self._arm_header_deadline()  # for the rest of the body and the next headers

    def _answered_early(self) -> bool:
        return self.conn.our_state is h11.DONE and self.conn.their_state is h11.SEND_BODY

    def _arm_header_deadline(self) -> None:
        self._disarm_header_deadline()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self.transport.is_closing():
            return
        if self._answered_early():
            self.transport.close()  # answered already: nothing to say about the body's end
            return
        if self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being written; the keep-alive rules take over after
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_HEADERS_LATE)
        self.transport.close()


_TWO_FRAMINGS = b"a request may not carry both Content-Length and Transfer-Encoding"


def _one_framing(app: ASGIApp) -> ASGIApp:
    """``app`` behind a refusal of requests framed two ways."""

    async def framed(scope: Scope, receive: Receive, send: Send) -> None:
        names = {name for name, _ in scope.get("headers", ())}
        if {b"content-length", b"transfer-encoding"} <= names:
            headers = [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", b"%d" % len(_TWO_FRAMINGS)),
                (b"connection", b"close"),
                _NOSNIFF,
            ]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": _TWO_FRAMINGS})
            return
        await app(scope, receive, send)

    return framed


def _timed_protocol(header_timeout_s: float) -> type[TimedH11Protocol]:
    return type("IngestH11Protocol", (TimedH11Protocol,), {"header_timeout_s": header_timeout_s})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the CLI owns SIGTERM/SIGINT for the process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ``StreamError`` naming it when that fails.

    Bound once by the process that owns the port, it can be handed to several serving processes
    (``serving(..., sock=)``): they share one accept queue, so one port serves them all and a
    worker that dies takes only the connections it had accepted."""
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise StreamError(f"ingest cannot listen on {host}:{port}: {reason}") from exc


@contextlib.asynccontextmanager
async def serving(
    app: Any,
    host: str,
    port: int,
    *,
    header_timeout_s: float = 10.0,
    sock: socket.socket | None = None,
) -> AsyncIterator[_EmbeddedServer]:
    """Serve the ASGI ``app`` in the current event loop until the block exits, then stop
    accepting and finish the requests in flight before returning.

    Listens on ``sock`` when given (a socket from ``listen``, possibly shared with other
    processes), else on ``host:port``: a port that cannot be bound (taken, not allowed) raises
    ``StreamError`` naming it.
    """
    sock = listen(host, port) if sock is None else sock
    server = _EmbeddedServer(
        uvicorn.Config(
            _one_framing(app),
            log_level="warning",
            log_config=None,  # uvicorn's records go through the process's own handlers
            lifespan="off",
            http=_timed_protocol(header_timeout_s),
        )
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
            raise StreamError(f"ingest server on {host}:{port} stopped during start")
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
        sock.close()


def bound_port(server: uvicorn.Server) -> int:
    """The port actually bound (useful with port 0)."""
    for listener in server.servers:
        for sock in listener.sockets:
            return int(sock.getsockname()[1])
    raise StreamError("ingest server is not listening")
