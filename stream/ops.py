"""What operators and orchestrators ask a running processor over HTTP.

* ``GET /healthz``: the process is alive and its event loop answers (200).
* ``GET /readyz``: 200 when it does its job, else 503 with every reason: no partition owned
  (under a supervisor: held by none of its workers), a partition no worker has taken or none
  has held for a while, a partition with events waiting and no batch or checkpoint for
  ``max_silence_s``, the store not readable now (``ping``, bounded by ``ping_timeout_s``), the
  latest write or publish failing.
* ``GET /metrics``: Prometheus text format of the processor's registry (and ingest's, which
  shares it).
"""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from stream.stats import ProcessorStats

# How long /readyz waits for the store's answer before it reports it unreadable.
PING_TIMEOUT_S = 5.0


@runtime_checkable
class Pingable(Protocol):
    async def ping(self) -> None: ...


class OpsRoutes:
    def __init__(
        self,
        stats: ProcessorStats,
        store: object,
        *,
        max_silence_s: float = 60.0,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> None:
        self.stats = stats
        # Stores without a ping (test doubles) are judged by their latest write only.
        self.store = store if isinstance(store, Pingable) else None
        self.max_silence_s = max_silence_s
        self.ping_timeout_s = ping_timeout_s
        self.routes = [
            Route("/healthz", self.health, methods=["GET"]),
            Route("/readyz", self.ready, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"}, 200)

    async def ready(self, request: Request) -> Response:
        problems = await self.stats.problems(self.max_silence_s)
        if self.store is not None:
            try:
                async with asyncio.timeout(self.ping_timeout_s):
                    await self.store.ping()
            except TimeoutError:
                problems.append(f"store: no answer within {self.ping_timeout_s:g} s")
            except Exception as exc:  # whatever the adapter raises, readiness reports it
                problems.append(f"store: {exc}")
        if problems:
            return _json({"status": "unready", "problems": problems}, 503)
        return _json({"status": "ready", "partitions": len(await self.stats.lag())}, 200)

    async def metrics(self, request: Request) -> Response:
        await self.stats.refresh()
        return Response(
            generate_latest(self.stats.metrics.registry),
            media_type=CONTENT_TYPE_LATEST,
        )


def _json(payload: dict[str, object], status: int) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")
