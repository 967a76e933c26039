"""``GET /report`` on a running processor: the page ``evalstream report`` writes, built from the
store at request time (``?app=A&app=B&from=1h&to=…``, the CLI's options; default the last hour).

Each page is built in a child process (evalstream.report_worker), one at a time: the stores are
opened there beside the processor's own (SQLite in WAL mode allows it), and the reading and
drawing, CPU work of up to seconds, never run in the processor's process. A few requests wait
their turn; more are told to come back (503 with Retry-After). A HEAD request is answered without
building anything.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from evalstream.settings import Settings
from evalstream.worker_pipe import start_worker
from stream.sources.subprocess_channel import end_child

if TYPE_CHECKING:
    from report import ReportRequest

DEFAULT_FROM = "1h"
# Requests that wait for the page being built before further ones are refused.
MAX_WAITING = 4
BUSY_RETRY_AFTER_S = 5


class LiveReport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = [Route("/report", self.page, methods=["GET", "HEAD"])]
        self._turn = asyncio.Lock()
        self._waiting = 0

    async def page(self, request: Request) -> Response:
        from evalstream.wiring.report import RangeError, report_apps, report_range
        from report import ReportRequest

        query = request.query_params
        try:
            start, end = report_range(
                query.get("from", DEFAULT_FROM), query.get("to"), datetime.now(UTC)
            )
            apps = report_apps(query.getlist("app"))
        except RangeError as exc:
            return PlainTextResponse(f"{exc.field}: {exc}", status_code=400)
        if request.method == "HEAD":
            return Response(media_type="text/html")
        if self._waiting >= MAX_WAITING:
            return PlainTextResponse(
                f"{MAX_WAITING} report requests are waiting already: try again shortly",
                status_code=503,
                headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
        self._waiting += 1
        try:
            await self._turn.acquire()
        finally:
            self._waiting -= 1
        try:
            return await self._built(ReportRequest(start=start, end=end, app_ids=apps))
        finally:
            self._turn.release()

    async def _built(self, wanted: ReportRequest) -> Response:
        process, channel = await start_worker("evalstream.report_worker", self.settings, wanted)
        reply: tuple[object, ...] | None = None
        error = None
        try:
            while (message := await channel.receive()) is not None:
                if message[0] == "finished":
                    error = message[1]
                else:
                    reply = message
        finally:
            # A request cancelled (its client gone) ends the child too.
            await channel.close(cancel_answers=True)
            await end_child(process)
        if reply is not None and reply[0] == "page":
            return HTMLResponse(reply[1])
        if reply is not None and reply[0] == "unavailable":
            return PlainTextResponse(f"the report cannot be built now: {reply[1]}", status_code=503)
        reason = error[1] if error is not None else f"it exited with code {process.returncode}"
        return PlainTextResponse(f"the report could not be drawn: {reason}", status_code=500)
