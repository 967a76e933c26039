"""``GET /report`` on a running processor: the page ``evalstream report`` writes, built from the
store at request time (``?app=A&app=B&from=1h&to=…``, the CLI's options; default the last hour).

The stores are opened per request beside the processor's own (SQLite in WAL mode allows it); the
rendering, which is CPU work of a few hundred milliseconds, runs in a worker thread so the
processing loop keeps going.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route

from common.errors import EvalstreamError
from evalstream.settings import Settings

DEFAULT_FROM = "1h"


class LiveReport:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.routes = [Route("/report", self.page, methods=["GET"])]

    async def page(self, request: Request) -> Response:
        # Imported on the first request: the plotting library is not the processor's start-up.
        from evalstream.wiring.report import RangeError, build_report, report_apps, report_range
        from report import ReportRequest, render_html

        query = request.query_params
        try:
            start, end = report_range(
                query.get("from", DEFAULT_FROM), query.get("to"), datetime.now(UTC)
            )
            apps = report_apps(query.getlist("app"))
        except RangeError as exc:
            return PlainTextResponse(f"{exc.field}: {exc}", status_code=400)
        wanted = ReportRequest(start=start, end=end, app_ids=apps)
        try:
            data = await build_report(self.settings, wanted)
        except EvalstreamError as exc:
            return PlainTextResponse(f"the report cannot be built now: {exc}", status_code=503)
        return HTMLResponse(await asyncio.to_thread(render_html, data))
