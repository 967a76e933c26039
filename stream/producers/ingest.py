"""HTTP ingest: ``POST /api/telemetry`` validates events and appends the valid ones to the source.

A request may carry one event, an array, or ``{"events": [...]}``, or with an NDJSON content
type (``application/x-ndjson``, ``application/jsonl``) one event per line. The answer lists what was
accepted and, per rejected event, every reason; rejected events are quarantined as well (on the
embedded backend logged with that decision, beside the accepted ones: the processor keeps them).
Status: 202 all accepted, 207 some rejected, 422 none accepted, 400 unreadable body,
408 body not complete within ``body_timeout_s`` of the request's start, 413 body (decompressed:
gzip and deflate are read, ``content_encoding``) or event count over the limit, 415 another
Content-Encoding, 503 when the processor is too far behind for the post to go within
``backlog_hold_s`` (``admission``: paced past ``max_backlog``; with Retry-After; nothing of the
request kept); with API keys configured also 401, 403 and 429 (``ingest_auth``). A client that
disconnects before its body is complete keeps nothing of that request. Serving (socket, header
deadline, half-closed bodies) is ``ingest_server``'s.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.applications import Starlette
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import EvalstreamError
from common.log_context import log_context
from schemas import TelemetryEvent, ValidationIssue
from store.ports import TelemetryStore
from stream.decode import Decoded, Decoder, accepted_event
from stream.enrich import Enricher, request_record_id, sent_form
from stream.metrics import IngestMetrics, issue_code
from stream.ports import EventSink, Rejected
from stream.producers.admission import Admission
from stream.producers.content_encoding import Corrupt, TooLarge, Unsupported, decoded_body
from stream.producers.ingest_auth import ALL_APPS, Authorizer, Denied, Sender, is_loopback

logger = logging.getLogger(__name__)

WHOLE_BODY_CODES = {"body_too_large": 413, "too_many_events": 413}


UNAVAILABLE_RETRY_AFTER_S = 5
# A producer refused for the backlog waits this long: long enough for the processor to work
# some of it off, short enough that it never runs dry while the producers wait.
BACKLOG_RETRY_AFTER_S = 1


class _BodyTooLarge(Exception):
    pass


def _json(payload: dict[str, Any], status: int, *, close: bool = False) -> Response:
    # close: the request's body was not read to its end, so the connection cannot carry another.
    headers = {"connection": "close"} if close else None
    return Response(
        orjson.dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


async def _read_limited(request: Request, limit: int, timeout_s: float) -> bytes:
    async with asyncio.timeout(timeout_s):
        return await _read_all(request, limit)


async def _read_all(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


# Content types of a body of events one per line (as ``send`` reads a file).
NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def _denied(denied: Denied) -> Response:
    response = _json({"error": denied.error, "message": denied.message}, denied.status)
    if denied.status == 401:
        response.headers["www-authenticate"] = "Bearer"
    if denied.retry_after_s is not None:
        response.headers["retry-after"] = str(denied.retry_after_s)
    return response


def _rejection(rejected: Rejected) -> dict[str, Any]:
    return {
        "index": rejected.index,
        "errors": [issue.model_dump() for issue in rejected.issues],
    }


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIds:
    """ASGI middleware: each request gets an id — the client's ``X-Request-ID`` when it is a
    plain token, else a new one — echoed in the answer's ``X-Request-ID`` and on every log line
    logged while answering (``request_id``). Every answer also says ``X-Content-Type-Options:
    nosniff``: an error in text/plain may quote what the client sent, and must stay text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = Headers(scope=scope).get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-content-type-options"] = "nosniff"
            await send(message)

        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)


class ReportAccess:
    """ASGI middleware: with ingest credentials configured, ``GET /report`` from beyond this
    machine needs one too (the page shows every app's latency, errors and incidents), and shows
    only the apps the key or token may post for. Loopback clients (a port-forward, the
    processor's own machine) and the health and metrics paths need none."""

    def __init__(self, app: ASGIApp, authorizer: Authorizer) -> None:
        self.app = app
        self.authorizer = authorizer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if (
            scope["type"] != "http"
            or scope["path"] != "/report"
            or not self.authorizer.enabled
            or (client is not None and is_loopback(client[0]))
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        found = await self.authorizer.identify(request.headers)
        if isinstance(found, Denied):
            await _denied(found)(scope, receive, send)
            return
        asked = request.query_params.getlist("app")
        refused = sorted(app for app in asked if not found.allows(app))
        if refused:
            denied = Denied(
                403, "forbidden_app", f"{found.name!r} may not see {', '.join(refused)}"
            )
            await _denied(denied)(scope, receive, send)
            return
        if not asked and ALL_APPS not in found.apps:
            query = [(k, v) for k, v in request.query_params.multi_items() if k != "app"]
            query += [("app", app) for app in found.apps]
            scope = {**scope, "query_string": urlencode(query).encode()}
        await self.app(scope, receive, send)


class CountRequests:
    """ASGI middleware: ingest requests by answer status and their duration."""

    def __init__(self, app: ASGIApp, metrics: IngestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/api/telemetry":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before answering

        async def send_counted(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counted)
        finally:
            self.metrics.requests.labels(str(status)).inc()
            self.metrics.seconds.observe(time.perf_counter() - started)


class IngestApp:
    """The Starlette application; ``sink`` and ``store`` must be open while it serves."""

    def __init__(
        self,
        decoder: Decoder,
        enricher: Enricher,
        sink: EventSink,
        store: TelemetryStore,
        *,
        body_timeout_s: float = 30.0,
        authorizer: Authorizer | None = None,
        metrics: IngestMetrics | None = None,
        extra_routes: Sequence[BaseRoute] = (),
        admission: Admission | None = None,
    ) -> None:
        self.body_timeout_s = body_timeout_s
        self.metrics = metrics
        self.admission = admission
        self.authorizer = authorizer
        self.decoder = decoder
        self.enricher = enricher
        self.sink = sink
        self.store = store
        self.app = Starlette(
            # Routes given by the process (health, metrics) come first: theirs win.
            routes=[
                *extra_routes,
                Route("/api/telemetry", self.post_telemetry, methods=["POST"]),
                Route("/healthz", self.health, methods=["GET"]),
            ],
            middleware=[
                Middleware(RequestIds),
                *([Middleware(CountRequests, metrics=metrics)] if metrics is not None else []),
                *([Middleware(ReportAccess, authorizer=authorizer)] if authorizer else []),
            ],
        )

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"}, 200)

    async def post_telemetry(self, request: Request) -> Response:
        try:
            return await self._post_telemetry(request)
        except EvalstreamError as exc:
            # The log or the store cannot keep events now (disk full, locked, unreachable):
            # nothing was answered as accepted, the producer sends again (ids are idempotent).
            logger.error("ingest cannot keep events now: %s", exc)
            response = _json(
                {
                    "error": "unavailable",
                    "message": f"events cannot be kept now, send again later: {exc}",
                },
                503,
            )
            response.headers["retry-after"] = str(UNAVAILABLE_RETRY_AFTER_S)
            return response

    async def _post_telemetry(self, request: Request) -> Response:
        now = datetime.now(UTC)
        key: Sender | None = None
        if self.authorizer is not None and self.authorizer.enabled:
            identified = await self.authorizer.identify(request.headers)
            if isinstance(identified, Denied):
                return _denied(identified)
            key = identified
        limit = self.decoder.limits.max_body_bytes
        try:
            body = await _read_limited(request, limit, self.body_timeout_s)
        except TimeoutError:
            return _json(
                {
                    "error": "body_timeout",
                    "message": f"request body not complete within {self.body_timeout_s:g} s",
                },
                408,
                close=True,
            )
        except ClientDisconnect:
            logger.info("ingest client disconnected before its body was complete")
            return _json({"error": "client_disconnected"}, 400, close=True)
        except _BodyTooLarge as exc:
            return _json(
                {
                    "error": "body_too_large",
                    "message": f"request body exceeds {limit} bytes ({exc.args[0]} seen)",
                },
                413,
            )
        try:
            # Several header lines are one comma-separated list (RFC 9110 5.3), in order.
            encodings = request.headers.getlist("content-encoding")
            body = decoded_body(body, ", ".join(encodings) if encodings else None, limit)
        except Unsupported as exc:
            return _json({"error": "unsupported_content_encoding", "message": str(exc)}, 415)
        except TooLarge as exc:
            return _json({"error": "body_too_large", "message": str(exc)}, 413)
        except Corrupt as exc:
            # The record keeps what decompressed (scrubbed of user_id values like any input),
            # not compressed bytes, in which a user_id could not be found to be replaced.
            issue = ValidationIssue(code="invalid_content_encoding", location="$", message=str(exc))
            kept = exc.kept(body)
            if refused := self._refused(key, Counter(), [None]):
                return refused
            await self._keep([Rejected(0, kept, (issue,))], now, body)
            return _json({"error": issue.code, "message": issue.message, "accepted": 0}, 400)
        if self.admission is not None and (behind := await self.admission.admit()):
            response = _json(
                {
                    "error": "backlog",
                    "message": f"the processor is {behind:,} events behind (limit "
                    f"{self.admission.limit:,}) and this request could not go within "
                    f"{self.admission.hold_s:g} s; nothing of it was kept: send it again "
                    f"after {BACKLOG_RETRY_AFTER_S} s",
                    "accepted": 0,
                },
                503,
            )
            response.headers["retry-after"] = str(BACKLOG_RETRY_AFTER_S)
            return response
        # A body of valid events of the common shape is read in one pass (stream.common_event);
        # any other is decoded item by item; NDJSON line by line.
        ndjson = _media_type(request.headers.get("content-type")) in NDJSON_TYPES
        events = None if ndjson else self.decoder.common_events(body, now)
        if ndjson:
            decoded = self.decoder.decode_ndjson(body, now)
        elif events is not None:
            decoded = Decoded([accepted_event(index, event) for index, event in enumerate(events)])
        else:
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                # The validator reads some JSON orjson refuses (e.g. nesting beyond orjson's
                # depth); whatever it makes of the body is answered like any other. The common
                # reading has refused it already.
                decoded = self.decoder.decode(body, now, common=False)
                if not decoded.accepted:
                    if refused := self._refused(key, Counter(), [None]):
                        return refused
                    await self._keep(decoded.rejected, now, body)
                    issue = decoded.rejected[0].issues[0]
                    return _json(
                        {"error": issue.code, "message": issue.message, "accepted": 0}, 400
                    )
            else:
                decoded = self.decoder.decode_value(parsed, now, raw=body)
        # Counted only for a key: without one (loopback, no auth) there is nothing to check.
        if key is not None and (
            refused := self._refused(
                key,
                Counter(accepted.event.app_id for accepted in decoded.accepted),
                [r.app_id for r in decoded.rejected],
            )
        ):
            return refused
        whole = (
            decoded.rejected[0].issues[0].code
            if decoded.rejected and not decoded.accepted
            else None
        )
        ids: list[str] = []
        bodies: list[tuple[str | None, bytes]] = []
        validated: list[tuple[TelemetryEvent, str]] = []
        for accepted in decoded.accepted:
            body_of_event, id_of_event = sent_form(accepted.event)
            bodies.append((accepted.event.app_id, body_of_event))
            validated.append((accepted.event, id_of_event))
            ids.append(id_of_event)
        await self._keep(decoded.rejected, now, body, bodies, validated)
        if whole in WHOLE_BODY_CODES:
            issue = decoded.rejected[0].issues[0]
            return _json(
                {"error": issue.code, "message": issue.message, "accepted": 0},
                WHOLE_BODY_CODES[whole],
            )
        status = 202 if not decoded.rejected else (207 if decoded.accepted else 422)
        return _json(
            {
                "accepted": len(decoded.accepted),
                "rejected": [_rejection(rejected) for rejected in decoded.rejected],
                "ids": ids,
            },
            status,
        )

    def _refused(
        self, key: Sender | None, apps: Counter[str], rejected: Sequence[str | None]
    ) -> Response | None:
        """The answer when ``key`` may not post these events (accepted by app, the app each
        rejected one names): an app it may not post for, or over its rate."""
        if key is None or self.authorizer is None:
            return None
        denied = self.authorizer.admit(key, apps, rejected)
        return None if denied is None else _denied(denied)

    async def _keep(
        self,
        rejected: Sequence[Rejected],
        now: datetime,
        body: bytes,
        bodies: list[tuple[str | None, bytes]] | None = None,
        validated: Sequence[tuple[TelemetryEvent, str]] = (),
    ) -> None:
        """Append a request's accepted events (``bodies``) and keep its rejected inputs in
        quarantine, each record named by the request ``body`` and its index there. Where the
        sink logs refusals (the embedded log) they go with the events, in one append: the
        processor makes their records as it reads the log, so a store that lost its last
        commits gets them back by reading it again, as it gets the events back; a request
        answered 503 kept nothing. Else (Event Hubs) they are written to the store here,
        before the events are appended."""
        bodies = bodies or []
        named = [
            replace(refused, record_id=request_record_id(body, refused.index))
            for refused in rejected
        ]
        logged = named if named and self.sink.logs_refusals else []
        if named and not logged:
            await self.store.write([], [self.enricher.quarantine(r, None, now) for r in named])
        if bodies or logged:
            await self.sink.append(bodies, validated, logged)
            if self.admission is not None:
                self.admission.appended(len(bodies) + len(logged))
        if named:
            if self.metrics is not None:
                for refused in named:
                    self.metrics.quarantined.labels(issue_code(refused.issues)).inc()
            logger.info("ingest rejected events", extra={"rejected": len(named)})
