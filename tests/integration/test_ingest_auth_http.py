"""Ingest with API keys and Entra ID tokens over a real socket (tokens signed with keys made
here, the JWKS served locally): 401/403/429 answers keep nothing; a refused bind."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.ops import OpsRoutes
from stream.producers.ingest import IngestApp
from stream.producers.ingest_auth import (
    ApiKey,
    Authorizer,
    Denied,
    EntraIdSettings,
    IngestAuthSettings,
    Sender,
    hash_key,
)
from stream.producers.ingest_server import bound_port, serving
from stream.sources.local_log import LocalLog, LocalLogSink
from stream.stats import ProcessorStats

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
    authorizer: Authorizer | None = None

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


@asynccontextmanager
async def entra_ingest(
    tmp_path: Path,
    jwks_url: str,
    authorizer: Callable[[IngestAuthSettings], Authorizer] = Authorizer,
    **entra: Any,
) -> AsyncIterator[Ingest]:
    """Ingest taking tokens of the tenant whose JWKS is at ``jwks_url``, with its readiness
    (``/readyz``: one partition owned, the store pinged) beside it."""
    settings = EntraIdSettings(
        issuer=ISSUER, audience=AUDIENCE, jwks_url=jwks_url, apps=("web-app",), **entra
    )
    stats = ProcessorStats()
    await stats.attach(Partition())
    auth = authorizer(IngestAuthSettings(entra=settings))
    async with (
        SqliteStore(tmp_path / "store.db") as store,
        LocalLogSink(tmp_path / "log.db", 2) as sink,
    ):
        app = IngestApp(
            Decoder(DecodeLimits(max_body_bytes=64 * 1024, max_events_per_body=20)),
            Enricher(AppDirectory(), b"k", "ingest"),
            sink,
            store,
            authorizer=auth,
            extra_routes=OpsRoutes(stats, store, ping_timeout_s=1).routes,
        )
        async with serving(app.app, "127.0.0.1", 0) as server:
            url = f"http://127.0.0.1:{bound_port(server)}"
            async with httpx.AsyncClient(base_url=url) as client:
                yield Ingest(client, store, tmp_path / "log.db", auth)


class Partition:
    """A partition owned and caught up, so readiness judges the store alone."""

    partition_id = "0"

    async def checkpointed_sequence(self) -> int | None:
        return None

    async def last_enqueued_sequence(self) -> int | None:
        return None


@pytest.fixture
async def entra(tmp_path: Path) -> AsyncIterator[tuple[Ingest, Tenant]]:
    tenant = Tenant(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    keys = Starlette(routes=[Route("/keys", lambda request: _jwks(tenant))])
    async with serving(keys, "127.0.0.1", 0) as jwks_server:
        jwks_url = f"http://127.0.0.1:{bound_port(jwks_server)}/keys"
        async with entra_ingest(tmp_path, jwks_url, jwks_refresh_cooldown_s=0) as ingest:
            yield ingest, tenant


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


# A token that must be checked against the key set: the answer depends on the key server alone.
PROBE = Tenant(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _http(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
    return f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


class KeyServer:
    """A JWKS endpoint on a raw socket, so it can fail as real ones do: ``answer`` is what it
    sends after reading a request, ``RESET`` a connection reset, ``HANG`` no answer ever."""

    RESET = b"reset"
    HANG = b"hang"

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.connections = 0
        self._open: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/keys"

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        await self._server.wait_closed()

    def stop(self) -> None:
        """Refuse connections and close the open ones (a fetch waiting on one ends)."""
        self._server.close()
        for writer in self._open:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._open.append(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if self.answer == self.HANG:
            return  # the connection stays open until the test ends
        if self.answer == self.RESET:
            # Linger 0: closing sends RST, which the client reads as a reset connection.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        writer.write(self.answer)
        await writer.drain()
        writer.close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _key_set(tenant: Tenant) -> bytes:
    return bytes(_jwks(tenant).body)


async def _checked_with_keys_unavailable(ingest: Ingest, retry_after: int) -> None:
    response = await ingest.post(PROBE.token(), events("web-app"))
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "keys_unavailable"
    assert "the signing keys of http://" in response.json()["message"]
    assert int(response.headers["retry-after"]) == retry_after
    assert "www-authenticate" not in response.headers


@pytest.mark.parametrize(
    "answer",
    [
        KeyServer.RESET,
        _http("200 OK", b"<html>sign in</html>", "text/html"),
        _http("200 OK", b"[]"),
        _http("200 OK", b'{"keys": "k1"}'),
        _http("200 OK", b'{"keys": []}'),
        _http("200 OK", b'{"keys": [{"kty": "RSA", "kid": "k1"}]}'),
        _http("200 OK", b'{"keys": [{"kty": "RSA", "kid": "k1", "alg": ["RS256"]}]}'),
        _http("200 OK", b'{"keys": [{"kty": "RSA", "kid": "k1"}]}')[:-10],  # cut short
        _http("500 Internal Server Error", b"{}"),
        _http("404 Not Found", b"{}"),
        _http("302 Found", b"").replace(b"\r\n\r\n", b"\r\nLocation: /elsewhere\r\n\r\n"),
    ],
    ids=[
        "reset",
        "not-json",
        "not-an-object",
        "keys-not-a-list",
        "no-keys",
        "key-without-its-numbers",
        "key-with-a-list-for-alg",
        "cut-short",
        "http-500",
        "http-404",
        "redirect",
    ],
)
async def test_a_key_server_failing_is_503_with_retry_after_not_500_nor_401(
    tmp_path: Path, answer: bytes
) -> None:
    # The token was not judged: the client should send it again, not drop it as refused.
    async with (
        KeyServer(answer) as jwks_url,
        entra_ingest(tmp_path, jwks_url, jwks_retry_s=7) as ingest,
    ):
        await _checked_with_keys_unavailable(ingest, retry_after=7)
        assert await ingest.kept() == (0, 0)


@pytest.mark.parametrize(
    "jwks_url",
    [f"http://127.0.0.1:{_unused_port()}/keys", "http://jwks.invalid/keys"],
    ids=["refused", "unknown-host"],
)
async def test_an_unreachable_key_server_is_503(tmp_path: Path, jwks_url: str) -> None:
    async with entra_ingest(tmp_path, jwks_url, jwks_retry_s=7) as ingest:
        await _checked_with_keys_unavailable(ingest, retry_after=7)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_after_a_failed_fetch_the_key_server_is_not_asked_again_until_retry_s(
    tmp_path: Path,
) -> None:
    clock = Clock()
    server = KeyServer(KeyServer.RESET)
    async with (
        server as jwks_url,
        entra_ingest(
            tmp_path, jwks_url, partial(Authorizer, clock=clock), jwks_retry_s=30
        ) as ingest,
    ):
        await _checked_with_keys_unavailable(ingest, retry_after=30)
        clock.now += 20.5
        await _checked_with_keys_unavailable(ingest, retry_after=10)
        assert server.connections == 1
        # Once retry_s is over the set is fetched again: the keys are back, the token judged.
        server.answer = _http("200 OK", _key_set(PROBE))
        clock.now += 10
        assert (await ingest.post(PROBE.token(), events("web-app"))).status_code == 202
        assert server.connections == 2


async def test_a_token_is_judged_against_a_valid_key_set_fetched_from_a_raw_server(
    tmp_path: Path,
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Beside the tenant's RSA key, an EC key: no RS256 token can be checked with it.
    ec_key = orjson.loads(ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()).public_key()))
    key_set = orjson.loads(_key_set(PROBE))
    key_set["keys"].append({**ec_key, "kid": "ec", "use": "sig"})
    async with (
        KeyServer(_http("200 OK", orjson.dumps(key_set))) as jwks_url,
        entra_ingest(tmp_path, jwks_url) as ingest,
    ):
        for token, reason in [
            (PROBE.token(signing=other), "Signature verification failed"),
            # PyJWT raised TypeError for an RS256 token checked with an EC key: a 500.
            (Tenant(other, kid="ec").token(), 'Unable to find a signing key that matches: "ec"'),
        ]:
            refused = await ingest.post(token, events("web-app"))
            assert refused.status_code == 401, refused.text
            assert refused.json()["error"] == "invalid_token"
            assert reason in refused.json()["message"]
        assert (await ingest.post(PROBE.token(), events("web-app"))).status_code == 202


async def test_made_up_kids_fetch_the_key_set_at_most_once_per_cooldown(tmp_path: Path) -> None:
    clock = Clock()
    server = KeyServer(_http("200 OK", _key_set(PROBE)))
    async with (
        server as jwks_url,
        entra_ingest(
            tmp_path, jwks_url, partial(Authorizer, clock=clock), jwks_refresh_cooldown_s=30
        ) as ingest,
    ):
        for n in range(10):
            made_up = Tenant(PROBE.signing, kid=f"made-up-{n}").token()
            refused = await ingest.post(made_up, events("web-app"))
            assert (refused.status_code, refused.json()["error"]) == (401, "invalid_token")
        assert (await ingest.post(PROBE.token(), events("web-app"))).status_code == 202
        assert server.connections == 1
        clock.now += 30  # a rotated key is looked for again once the cooldown is over
        assert (await ingest.post(made_up, events("web-app"))).status_code == 401
        assert server.connections == 2


class Entered(Authorizer):
    """Counts the requests that reached the authorizer, so a test can wait for all of them."""

    def __init__(self, settings: IngestAuthSettings) -> None:
        super().__init__(settings)
        self.entered = 0
        self.changed = asyncio.Condition()

    async def identify(self, headers: Mapping[str, str]) -> Sender | Denied:
        async with self.changed:
            self.entered += 1
            self.changed.notify_all()
        return await super().identify(headers)


async def test_a_key_server_that_never_answers_holds_no_thread_and_answers_503_in_time(
    tmp_path: Path,
) -> None:
    # More requests than the default thread pool has threads (32 at most): each waiting on a
    # fetch in a thread of it would leave none for the store's ping, and /readyz would fail.
    requests = 40
    timeout_s = 3.0
    server = KeyServer(KeyServer.HANG)
    async with (
        server as jwks_url,
        entra_ingest(
            tmp_path, jwks_url, Entered, jwks_timeout_s=timeout_s, jwks_retry_s=60
        ) as ingest,
    ):
        authorizer = cast(Entered, ingest.authorizer)
        started = time.monotonic()
        posts = [
            asyncio.create_task(ingest.post(Tenant(PROBE.signing, kid=f"kid-{n}").token(), b"[]"))
            for n in range(requests)
        ]
        try:
            async with authorizer.changed:
                await authorizer.changed.wait_for(lambda: authorizer.entered == requests)
            ready = await ingest.client.get("/readyz")
            assert not any(post.done() for post in posts)  # readiness answered while they wait
            assert ready.status_code == 200, ready.text
            answers = await asyncio.gather(*posts)
            assert time.monotonic() - started < timeout_s + 2
        finally:
            # Before ingest stops, which waits for its requests: a fetch stuck in a thread
            # would hold its request (and this test) until the connection ends.
            server.stop()
        assert {answer.status_code for answer in answers} == {503}
        assert {answer.headers["retry-after"] for answer in answers} == {"60"}
        assert f"no key set within {timeout_s:g} s" in answers[0].json()["message"]
        assert server.connections == 1  # one fetch at a time, whatever the kids
