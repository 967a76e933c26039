"""An HTTPS reverse proxy in front of cosmosdb-server that injects throttling, outages and delays.

cosmosdb-server has no request units, so it never throttles; tests of retry behaviour put this
proxy between the SDK and the server and tell it, per test, to answer the next N matching
requests with 429 (with ``x-ms-retry-after-ms``) or 503, or to delay them. Everything else is
passed through unchanged.

Why TLS is terminated here rather than running cosmos in plain HTTP: azure-cosmos retries a 503
only when endpoint discovery is on (it "fails over" to the next region, which for a one-region
account is the same endpoint once more), and plain HTTP endpoints need discovery off. So the
proxy serves HTTPS with cosmosdb-server's own self-signed certificate (azure-cosmos skips
verification for 127.0.0.1 and localhost), talks HTTPS to the server, and rewrites the account
metadata (``GET /``) so that the endpoints the SDK discovers point at the proxy, not past it.
The client is then configured exactly as against Azure.

The proxy runs an asyncio loop in a background thread, so synchronous and asynchronous tests
can both drive it; its control methods are thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

logger = logging.getLogger(__name__)

CERT_DIR = Path(__file__).resolve().parent / "node_modules" / "@vercel" / "cosmosdb-server"
DEFAULT_MATCH = r"/docs"
START_TIMEOUT = 10.0

# Hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp recomputes for the re-sent body.
_SKIP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "host",
        "content-length",
    }
)


@dataclass
class _Fault:
    kind: str  # "throttle" | "unavailable" | "delay"
    remaining: int | None  # None: until reset
    pattern: re.Pattern[str]
    methods: frozenset[str] | None
    retry_after_ms: int = 0
    delay_s: float = 0.0

    def matches(self, method: str, path: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        return self.pattern.search(path) is not None


@dataclass(frozen=True)
class ProxiedRequest:
    """One request seen by the proxy and what it answered."""

    method: str
    path: str
    status: int
    injected: str | None


@dataclass
class _State:
    faults: list[_Fault] = field(default_factory=list)
    log: list[ProxiedRequest] = field(default_factory=list)


class FaultProxy:
    """Reverse proxy from ``https://127.0.0.1:<port>/`` to an upstream cosmosdb-server.

    Use as a context manager, or call start()/stop().
    """

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream_port = upstream_port
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}/"

    # -- control (any thread) -------------------------------------------------------------

    def throttle(
        self,
        count: int,
        *,
        retry_after_ms: int = 10,
        match: str = DEFAULT_MATCH,
        methods: set[str] | None = None,
    ) -> None:
        """Answer the next `count` matching requests with 429 and ``x-ms-retry-after-ms``."""
        self._add(_Fault("throttle", count, re.compile(match), _methods(methods), retry_after_ms))

    def unavailable(
        self, count: int, *, match: str = DEFAULT_MATCH, methods: set[str] | None = None
    ) -> None:
        """Answer the next `count` matching requests with 503 Service Unavailable."""
        self._add(_Fault("unavailable", count, re.compile(match), _methods(methods)))

    def delay(
        self,
        seconds: float,
        *,
        count: int | None = None,
        match: str = DEFAULT_MATCH,
        methods: set[str] | None = None,
    ) -> None:
        """Hold matching requests for `seconds` before forwarding them (all of them if no count)."""
        fault = _Fault("delay", count, re.compile(match), _methods(methods), delay_s=seconds)
        self._add(fault)

    def reset(self) -> None:
        """Drop every pending fault and the request log."""
        with self._lock:
            self._state = _State()

    @property
    def requests(self) -> list[ProxiedRequest]:
        with self._lock:
            return list(self._state.log)

    def injected(self, kind: str | None = None) -> int:
        """How many responses were injected (of one kind, or all)."""
        return sum(1 for r in self.requests if r.injected and (kind is None or r.injected == kind))

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._state.faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._state.faults:
                if fault.matches(method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._state.faults.remove(fault)
                    return fault
            return None

    def _record(self, entry: ProxiedRequest) -> None:
        with self._lock:
            self._state.log.append(entry)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start() below
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="cosmos-fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError(f"fault proxy did not start within {START_TIMEOUT:.0f}s")
        if errors:
            raise RuntimeError("fault proxy failed to start") from errors[0]
        logger.info("fault proxy on port %d -> cosmos on %d", self.port, self.upstream_port)
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the proxy itself (loop thread) -----------------------------------------------------

    async def _serve(self) -> None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(CERT_DIR / "cert.pem", CERT_DIR / "key.pem")
        # The upstream certificate is cosmosdb-server's self-signed one.
        connector = aiohttp.TCPConnector(ssl=False)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=tls)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        fault = self._take_fault(method, path)
        if fault is not None and fault.kind == "throttle":
            self._record(ProxiedRequest(method, path, 429, "throttle"))
            return _cosmos_error(
                429,
                "TooManyRequests",
                "Request rate is large. More Request Units may be needed, so no changes were"
                " made. Please retry this request later. (injected by the fault proxy)",
                {"x-ms-retry-after-ms": str(fault.retry_after_ms), "x-ms-substatus": "3200"},
            )
        if fault is not None and fault.kind == "unavailable":
            self._record(ProxiedRequest(method, path, 503, "unavailable"))
            return _cosmos_error(
                503,
                "ServiceUnavailable",
                "Service is currently unavailable. (injected by the fault proxy)",
                {},
            )
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
        response = await self._forward(request)
        self._record(ProxiedRequest(method, path, response.status, fault.kind if fault else None))
        return response

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None  # set in _serve
        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _SKIP_HEADERS
        )
        body = await request.read()
        url = f"https://{self.host}:{self.upstream_port}{request.rel_url}"
        async with self._session.request(
            request.method, url, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            out_headers = CIMultiDict(
                (k, v) for k, v in upstream.headers.items() if k.lower() not in _SKIP_HEADERS
            )
            if request.method == "GET" and request.path == "/" and upstream.status == 200:
                payload = self._rewrite_account(payload)
            return web.Response(status=upstream.status, body=payload, headers=out_headers)

    def _rewrite_account(self, payload: bytes) -> bytes:
        # The account document lists the server's own address as the read/write endpoints.
        upstream = f"{self.host}:{self.upstream_port}".encode()
        return payload.replace(upstream, f"{self.host}:{self.port}".encode())


def _methods(methods: set[str] | None) -> frozenset[str] | None:
    return None if methods is None else frozenset(m.upper() for m in methods)


def _cosmos_error(status: int, code: str, message: str, headers: dict[str, str]) -> web.Response:
    body = json.dumps({"code": code, "message": message}).encode()
    return web.Response(
        status=status,
        body=body,
        headers={"content-type": "application/json", "x-ms-request-charge": "0", **headers},
    )


@contextmanager
def running_fault_proxy(upstream_port: int) -> Iterator[FaultProxy]:
    """A started FaultProxy in front of the cosmosdb-server listening on `upstream_port`."""
    proxy = FaultProxy(upstream_port)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
