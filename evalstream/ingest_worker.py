"""One HTTP ingest worker process: serves ``POST /api/telemetry`` on a listening socket it
inherits from the processor's process and appends accepted events to the configured sink, so
serving HTTP never takes time from processing.

Started by ``ingest_pool`` as ``python -m evalstream.ingest_worker``. Over stdin it receives one
``WorkerSpec``; over stdout it sends its ingest metrics (``("metrics", snapshot)``) every
``metrics_interval_s`` and once more when it exits. ``/healthz``, ``/readyz``, ``/metrics`` and
``/report`` are forwarded to the processor's own ops server, which answers for the whole
(processing plus every worker's ingest metrics, summed).

SIGTERM or SIGINT, or the processor's process going away (stdin closed): stop accepting, answer
the requests in flight (their events are appended before the answer), then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from common.errors import EvalstreamError
from common.retry import until_first
from evalstream import logs, wiring
from evalstream.settings import Settings
from stream.exceptions import SourceUnavailable
from stream.memory import tuned_memory
from stream.metrics import IngestMetrics, snapshot
from stream.ops import PING_TIMEOUT_S
from stream.producers.ingest_rates import SqliteBuckets
from stream.producers.ingest_server import serving
from stream.sources.subprocess_channel import Channel

logger = logging.getLogger(__name__)

# Paths the processor's ops server answers; a worker forwards them there.
FORWARDED_PATHS = ("/healthz", "/readyz", "/metrics", "/report")
# /readyz: the processor's own bound on its store ping and a second for the rest of its answer,
# so a frozen processor is "unready" before the readiness probe (8 s) gives up on the worker.
READY_FORWARD_TIMEOUT_S = PING_TIMEOUT_S + 1.0
# How long a forwarded ops request may take (readiness pings the store for up to 5 s); a report
# page waits for those before it (evalstream.live_report) and reads a range of the store.
FORWARD_TIMEOUT_S = 15.0
REPORT_FORWARD_TIMEOUT_S = 600.0
# The answer's headers a forwarded answer keeps (not its length or encoding: httpx decoded it).
KEPT_HEADERS = ("content-type", "retry-after")
# The exit code of a worker that could not serve for a passing cause: the pool starts it
# again, however many times in a row that happens.
EXIT_PASSING = os.EX_TEMPFAIL


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs from the processor's process."""

    settings: Settings
    fd: int  # the listening socket, inherited
    ops_url: str  # the processor's ops server
    rates_path: Path | None  # the token buckets shared by every worker (keys with a rate)
    log_level: str
    log_format: logs.LogFormat
    metrics_interval_s: float = 0.5


def forwarded_routes(
    client: httpx.AsyncClient, paths: Sequence[str], health_timeout_s: float = 3.0
) -> list[BaseRoute]:
    """GET (and HEAD) routes answered by whatever ``client``'s server answers for the same path
    and method, with the headers that tell a client what to do next (Retry-After).

    ``/healthz`` waits ``health_timeout_s`` at most (``processor.health_timeout_s``): a frozen
    processor is then a prompt 503, within the liveness probe's own timeout."""

    def timeout_for(path: str) -> float:
        if path == "/report":
            return REPORT_FORWARD_TIMEOUT_S
        if path == "/readyz":
            return READY_FORWARD_TIMEOUT_S
        return health_timeout_s if path == "/healthz" else FORWARD_TIMEOUT_S

    async def forward(request: Request) -> Response:
        path = request.url.path
        timeout = timeout_for(path)
        try:
            # Every value of a repeated key (/report?app=a&app=b): the query as a mapping kept
            # only the last. A HEAD stays a HEAD: as a GET it had the processor build a page.
            answer = await client.request(
                request.method,
                path,
                params=httpx.QueryParams(request.url.query),
                timeout=timeout,
            )
        except httpx.TimeoutException:
            return _unavailable(f"processor: no answer within {timeout:g} s")
        except httpx.HTTPError as exc:
            return _unavailable(f"processor: {exc!r}")
        headers = {name: answer.headers[name] for name in KEPT_HEADERS if name in answer.headers}
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    return [Route(path, forward, methods=["GET", "HEAD"]) for path in paths]


def _unavailable(problem: str) -> Response:
    return Response(
        orjson.dumps({"status": "unavailable", "problems": [problem]}),
        status_code=503,
        media_type="application/json",
    )


async def serve(spec: WorkerSpec, channel: Channel) -> None:
    settings = spec.settings
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    # As the processor (evalstream.runtime): every thread's stack to stderr.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    registry = CollectorRegistry()
    buckets = SqliteBuckets(spec.rates_path) if spec.rates_path is not None else None
    try:
        async with (
            wiring.store(settings) as store,
            wiring.sink(settings) as sink,
            httpx.AsyncClient(base_url=spec.ops_url, timeout=FORWARD_TIMEOUT_S) as ops,
        ):
            app = wiring.ingest_app(
                settings,
                sink,
                store,
                IngestMetrics(registry),
                forwarded_routes(ops, FORWARDED_PATHS, settings.processor.health_timeout_s),
                buckets,
            )
            sock = socket.socket(fileno=spec.fd)
            # As the processing workers: the start-up's objects (modules, the model's schemas)
            # leave the collector's scans; full collections over them stalled every request
            # in flight for tens of ms.
            with tuned_memory():
                async with (
                    serving(
                        app.app,
                        settings.ingest.host,
                        settings.ingest.port,
                        header_timeout_s=settings.ingest.header_timeout_s,
                        sock=sock,
                    ),
                    asyncio.TaskGroup() as group,
                ):
                    group.create_task(_stop_when_orphaned(channel, stop))
                    group.create_task(_report(channel, registry, spec.metrics_interval_s, stop))
            # Out of serving: every request in flight has been answered.
            with contextlib.suppress(SourceUnavailable):
                channel.send("metrics", snapshot(registry))
                await channel.flush()
    finally:
        if buckets is not None:
            buckets.close()


async def _stop_when_orphaned(channel: Channel, stop: asyncio.Event) -> None:
    """The processor's process closes our stdin only by exiting: stop then, too."""
    receiving = asyncio.ensure_future(channel.receive())
    try:
        await until_first(receiving, stop)
        if receiving.done() and receiving.result() is None and not stop.is_set():
            logger.warning("the processor's process is gone: ingest worker stopping")
            stop.set()
    finally:
        receiving.cancel()


async def _report(
    channel: Channel, registry: CollectorRegistry, interval_s: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval_s):
                await stop.wait()
        try:
            channel.send("metrics", snapshot(registry))
            await channel.flush()
        except SourceUnavailable:
            return  # the processor's process is gone (_stop_when_orphaned stops us)


async def _main() -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    # The channel gets stdout's pipe; anything printed goes to stderr instead of into it.
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(out, "wb", buffering=0)
    )
    channel = Channel(reader, asyncio.StreamWriter(transport, protocol, reader, loop))
    message = await channel.receive()
    if message is None or message[0] != "spec":
        return 2
    spec: WorkerSpec = message[1]
    # (httpx's line per forwarded health check or scrape is left out: its failures are
    # answered 503.)
    logs.configure(spec.log_level, spec.log_format)
    return await start(spec, channel)


async def start(spec: WorkerSpec, channel: Channel) -> int:
    """Serve until stopped; the exit code: 0, or EXIT_PASSING when the worker cannot serve
    for a passing cause (the data dir full as it starts), which the pool waits out."""
    try:
        await serve(spec, channel)
    except EvalstreamError as exc:
        if not exc.retryable:
            raise
        logger.error("ingest worker cannot serve now: %s", exc)
        return EXIT_PASSING
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
