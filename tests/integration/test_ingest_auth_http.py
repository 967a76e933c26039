"""Ingest with API keys over a real socket: 401/403/429 answers keep nothing; a refused bind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest

from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.producers.ingest import IngestApp
from stream.producers.ingest_auth import ApiKey, Authorizer, IngestAuthSettings, hash_key
from stream.producers.ingest_server import bound_port, serving
from stream.sources.local_log import LocalLog, LocalLogSink

pytestmark = pytest.mark.integration

WEB = ApiKey(
    name="web", key_sha256=hash_key("web-key"), apps=("web-app",), events_per_s=0.01, burst=3
)
ANY = ApiKey(name="ops", key_sha256=hash_key("ops-key"))
WHEN = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()


def events(*apps: str) -> bytes:
    return orjson.dumps(
        {
            "events": [
                {"app_id": app, "timestamp": WHEN, "trace_id": f"t{i}"}
                for i, app in enumerate(apps)
            ]
        }
    )


@dataclass
class Ingest:
    client: httpx.AsyncClient
    store: SqliteStore
    log_path: Path

    async def post(self, key: str | None, body: bytes) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        return await self.client.post("/api/telemetry", content=body, headers=headers)

    async def kept(self) -> tuple[int, int]:
        log = LocalLog(self.log_path, 2)
        try:
            logged = sum(len(log.read(p, -1, 10_000)) for p in range(2))
        finally:
            log.close()
        return logged, await self.store.count("quarantine")


@pytest.fixture
async def ingest(tmp_path: Path) -> AsyncIterator[Ingest]:
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        LocalLogSink(tmp_path / "log.db", 2) as sink,
    ):
        app = IngestApp(
            Decoder(DecodeLimits(max_body_bytes=64 * 1024, max_events_per_body=20)),
            Enricher(AppDirectory(), b"k", "ingest"),
            sink,
            store,
            authorizer=Authorizer(IngestAuthSettings(api_keys=(WEB, ANY))),
        )
        async with serving(app.app, "127.0.0.1", 0) as server:
            url = f"http://127.0.0.1:{bound_port(server)}"
            async with httpx.AsyncClient(base_url=url) as client:
                yield Ingest(client, store, tmp_path / "log.db")


async def test_no_or_unknown_key_is_401_and_keeps_nothing(ingest: Ingest) -> None:
    for key in (None, "guess"):
        response = await ingest.post(key, events("web-app") + b"garbage")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"] == "unauthenticated"
    assert await ingest.kept() == (0, 0)


async def test_a_key_posting_for_another_app_is_403_and_keeps_nothing(ingest: Ingest) -> None:
    response = await ingest.post("web-key", events("web-app", "billing"))
    assert response.status_code == 403
    assert response.json()["message"] == "key 'web' may not post for billing"
    assert await ingest.kept() == (0, 0)


async def test_over_the_rate_is_429_with_retry_after(ingest: Ingest) -> None:
    assert (await ingest.post("web-key", events("web-app", "web-app"))).status_code == 202
    response = await ingest.post("web-key", events("web-app", "web-app"))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 50  # 1 token missing at 0.01/s
    assert (await ingest.post("ops-key", events("web-app", "web-app"))).status_code == 202
    assert await ingest.kept() == (4, 0)


async def test_a_valid_key_gets_the_usual_answers(ingest: Ingest) -> None:
    response = await ingest.post("ops-key", events("a") + b"")
    assert response.status_code == 202
    unreadable = await ingest.post("ops-key", b"{not json")
    assert unreadable.status_code == 400
    assert await ingest.kept() == (1, 1)


def test_binding_beyond_loopback_without_keys_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", "process", "--data-dir", str(tmp_path / "d")],
        env={**os.environ, "EVALSTREAM_INGEST__HOST": "0.0.0.0"},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    output = (result.stdout + result.stderr).decode()
    assert "ingest.host 0.0.0.0 is reachable beyond this machine" in output
    assert "Traceback" not in output
