"""``GET /report`` through the ingest app with credentials configured: from beyond this machine
it needs a key or token and shows only that sender's apps; from loopback, nothing changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.producers.ingest import IngestApp
from stream.producers.ingest_auth import ApiKey, Authorizer, IngestAuthSettings, hash_key
from stream.sources.local_log import LocalLogSink

WEB = ApiKey(name="web", key_sha256=hash_key("web-key"), apps=("web-app", "web-api"))
OPS = ApiKey(name="ops", key_sha256=hash_key("ops-key"))


async def shown_apps(request: Request) -> Response:
    """Stands in for the live report (or the worker's route forwarding to it)."""
    return PlainTextResponse(",".join(request.query_params.getlist("app")) or "every app")


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[IngestApp]:
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        LocalLogSink(tmp_path / "log.db", 2) as sink,
    ):
        yield IngestApp(
            Decoder(),
            Enricher(AppDirectory(), b"k", "ingest"),
            sink,
            store,
            authorizer=Authorizer(IngestAuthSettings(api_keys=(WEB, OPS))),
            extra_routes=[Route("/report", shown_apps, methods=["GET"])],
        )


def client(app: IngestApp, host: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app.app, client=(host, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://evalstream")


async def test_from_beyond_this_machine_the_report_needs_a_key_and_shows_its_apps(
    app: IngestApp,
) -> None:
    async with client(app, "192.0.2.10") as remote:
        anonymous = await remote.get("/report")
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        wrong = await remote.get("/report", headers={"authorization": "Bearer guess"})
        assert wrong.status_code == 401
        web = {"authorization": "Bearer web-key"}
        assert (await remote.get("/report", headers=web)).text == "web-app,web-api"
        one = await remote.get("/report", params={"app": "web-api", "from": "6h"}, headers=web)
        assert one.text == "web-api"
        other = await remote.get("/report", params={"app": "billing"}, headers=web)
        assert other.status_code == 403 and other.json()["error"] == "forbidden_app"
        every = await remote.get("/report", headers={"x-api-key": "ops-key"})
        assert every.text == "every app"
        # Health and metrics stay open to probes and scrapers.
        assert (await remote.get("/healthz")).status_code == 200


async def test_from_loopback_the_report_is_as_before(app: IngestApp) -> None:
    async with client(app, "127.0.0.1") as local:
        answer = await local.get("/report", params={"app": "billing"})
        assert (answer.status_code, answer.text) == (200, "billing")
