"""Ingest with API keys and Entra ID tokens over a real socket (tokens signed with keys made
here, the JWKS served locally): 401/403/429 answers keep nothing; a refused bind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.producers.ingest import IngestApp
from stream.producers.ingest_auth import (
    ApiKey,
    Authorizer,
    EntraIdSettings,
    IngestAuthSettings,
    hash_key,
)
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
    assert response.json()["message"] == "'web' may not post for billing"
    assert await ingest.kept() == (0, 0)


async def test_over_the_rate_is_429_with_retry_after(ingest: Ingest) -> None:
    assert (await ingest.post("web-key", events("web-app", "web-app"))).status_code == 202
    response = await ingest.post("web-key", events("web-app", "web-app"))
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 50  # 1 token missing at 0.01/s
    assert (await ingest.post("ops-key", events("web-app", "web-app"))).status_code == 202
    assert await ingest.kept() == (4, 0)


async def test_a_key_with_a_rate_posting_only_invalid_events_gets_422_and_they_are_quarantined(
    ingest: Ingest,
) -> None:
    # No accepted event is nothing to count: it was a 500 (an empty max() in the buckets).
    invalid = orjson.dumps([{"app_id": "web-app", "timestamp": "not a time", "trace_id": "t"}])
    response = await ingest.post("web-key", invalid)
    assert response.status_code == 422
    assert response.json()["rejected"][0]["errors"][0]["code"] == "datetime_from_date_parsing"
    assert await ingest.kept() == (0, 1)


def invalid(*apps: str) -> bytes:
    return orjson.dumps(
        [{"app_id": app, "timestamp": "not a time", "trace_id": "t"} for app in apps]
    )


async def test_rejected_events_take_from_the_rate_as_they_are_kept(ingest: Ingest) -> None:
    # Each rejected event is a quarantine record: without counting them, a key with a rate
    # could post invalid events as fast as it likes and fill the disk.
    assert (await ingest.post("web-key", invalid("web-app", "web-app"))).status_code == 422
    assert (await ingest.post("web-key", invalid("web-app"))).status_code == 422
    assert await ingest.kept() == (0, 3)
    for body in (invalid("web-app"), events("web-app")):
        response = await ingest.post("web-key", body)
        assert response.status_code == 429
        assert response.json()["message"] == "'web' is over 0.01 events/s for web-app"
    assert await ingest.kept() == (0, 3)
    # Events naming no app the key may post for, and unreadable bodies, share one bucket.
    assert (await ingest.post("web-key", invalid("billing", "web app"))).status_code == 422
    assert (await ingest.post("web-key", b"{not json")).status_code == 400
    assert await ingest.kept() == (0, 6)
    for body in (b"{not json", invalid("billing")):
        response = await ingest.post("web-key", body)
        assert response.status_code == 429
        message = "'web' is over 0.01 events/s for events without an app it may post for"
        assert response.json()["message"] == message
    too_many = await ingest.post("web-key", invalid("billing", "billing", "x", "y"))
    assert too_many.status_code == 413
    assert too_many.json()["error"] == "too_many_events"
    # A key without a rate is not limited.
    assert (await ingest.post("ops-key", invalid("ops-app"))).status_code == 422
    assert await ingest.kept() == (0, 7)


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


ISSUER = "https://login.example.test/tenant-1/v2.0"
AUDIENCE = "api://evalstream-ingest"


@dataclass
class Tenant:
    signing: rsa.RSAPrivateKey
    kid: str = "k1"

    def token(self, signing: rsa.RSAPrivateKey | None = None, **claims: object) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "azp": "client-a", "iat": now, "exp": now + 600}
        payload.update(claims)
        return jwt.encode(
            payload, signing or self.signing, algorithm="RS256", headers={"kid": self.kid}
        )


def _jwks(tenant: Tenant) -> Response:
    jwk = orjson.loads(RSAAlgorithm.to_jwk(tenant.signing.public_key()))
    return Response(
        orjson.dumps({"keys": [{**jwk, "kid": tenant.kid, "use": "sig", "alg": "RS256"}]}),
        media_type="application/json",
    )


@pytest.fixture
async def entra(tmp_path: Path) -> AsyncIterator[tuple[Ingest, Tenant]]:
    tenant = Tenant(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    keys = Starlette(routes=[Route("/keys", lambda request: _jwks(tenant))])
    async with (
        serving(keys, "127.0.0.1", 0) as jwks_server,
        SqliteStore(tmp_path / "store.db") as store,
        LocalLogSink(tmp_path / "log.db", 2) as sink,
    ):
        settings = EntraIdSettings(
            issuer=ISSUER,
            audience=AUDIENCE,
            jwks_url=f"http://127.0.0.1:{bound_port(jwks_server)}/keys",
            apps=("web-app",),
            jwks_refresh_cooldown_s=0,
        )
        app = IngestApp(
            Decoder(DecodeLimits(max_body_bytes=64 * 1024, max_events_per_body=20)),
            Enricher(AppDirectory(), b"k", "ingest"),
            sink,
            store,
            authorizer=Authorizer(IngestAuthSettings(entra=settings)),
        )
        async with serving(app.app, "127.0.0.1", 0) as server:
            url = f"http://127.0.0.1:{bound_port(server)}"
            async with httpx.AsyncClient(base_url=url) as client:
                yield Ingest(client, store, tmp_path / "log.db"), tenant


async def test_a_valid_entra_token_is_accepted(entra: tuple[Ingest, Tenant]) -> None:
    ingest, tenant = entra
    assert (await ingest.post(tenant.token(), events("web-app"))).status_code == 202
    forbidden = await ingest.post(tenant.token(), events("billing"))
    assert forbidden.status_code == 403
    assert forbidden.json()["message"] == "'entra:client-a' may not post for billing"
    assert await ingest.kept() == (1, 0)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "Signature has expired"),
        ("wrong_audience", "Audience doesn't match"),
        ("wrong_issuer", "Invalid issuer"),
        ("wrong_signature", "Signature verification failed"),
        ("unknown_kid", "Unable to find a signing key"),
    ],
)
async def test_entra_tokens_failing_a_check_are_401(
    entra: tuple[Ingest, Tenant], case: str, reason: str
) -> None:
    ingest, tenant = entra
    now = int(time.time())
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = {
        "expired": lambda: tenant.token(exp=now - 3600, iat=now - 7200),
        "wrong_audience": lambda: tenant.token(aud="api://someone-else"),
        "wrong_issuer": lambda: tenant.token(iss="https://login.example.test/tenant-2/v2.0"),
        "wrong_signature": lambda: tenant.token(signing=other),
        "unknown_kid": lambda: Tenant(other, kid="k2").token(),
    }[case]()
    response = await ingest.post(token, events("web-app"))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert reason in response.json()["message"]
    assert await ingest.kept() == (0, 0)


async def test_a_rotated_signing_key_is_fetched_by_its_kid(entra: tuple[Ingest, Tenant]) -> None:
    ingest, tenant = entra
    assert (await ingest.post(tenant.token(), events("web-app"))).status_code == 202
    tenant.signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tenant.kid = "k2"  # the JWKS now serves only the new key
    assert (await ingest.post(tenant.token(), events("web-app"))).status_code == 202
    assert await ingest.kept() == (2, 0)
