"""HTTP ingest in worker processes of its own, beside the processor.

The processor's process binds the ingest port once and hands the listening socket to every
worker (``ingest_worker``): they share one accept queue, so one port serves them all, a restart
never closes the port (connections wait in the queue meanwhile), and a worker that dies takes
only the requests it had accepted — none of them answered as accepted unless already appended.
Each worker appends to the event log itself: the log's appends are SQLite write transactions
(``BEGIN IMMEDIATE``), so appenders in several processes take turns and every partition keeps
numbering its events without gaps or repeats.

``IngestPool.run`` keeps ``workers`` processes running: a worker that exits is started again
after a pause that grows while workers keep dying young (1 s up to 10 s); it gives up (raises
``StreamError``, which stops the processor) after ``MAX_FAILED_STARTS`` in a row that died
within ``HEALTHY_AFTER_S`` (a configuration that can never serve), unless they exited for a
passing cause (``EXIT_PASSING``: the data dir full), which is waited out. When ``stop`` is set it
sends each worker SIGTERM and waits: a worker stops accepting, answers the requests in flight,
then exits.

Metrics: each worker sends its ingest counters here (``SummedWorkers``); the processor's
``/metrics`` shows their sums, and a worker forwards ``/metrics`` (and ``/healthz``,
``/readyz``, ``/report``) to the processor's ops server, so every worker answers for the whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from common.children import signal_child
from common.retry import Backoff, until_first
from evalstream import ingest_worker, logs
from evalstream.ingest_worker import WorkerSpec
from evalstream.settings import Settings
from stream.exceptions import SourceUnavailable, StreamError
from stream.metrics import SummedWorkers
from stream.producers.ingest_server import bound_port, listen, serving
from stream.sources.subprocess_channel import Channel, child_environment

logger = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(initial_s=1.0, max_s=10.0, jitter=False)
# A worker that served this long was healthy: the next one starts without a pause.
HEALTHY_AFTER_S = 10.0
MAX_FAILED_STARTS = 5


class IngestPool:
    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        metrics: SummedWorkers,
        port: int,
        *,
        restart_backoff: Backoff = RESTART_BACKOFF,
        max_failed_starts: int = MAX_FAILED_STARTS,
    ) -> None:
        self.spec = spec
        self.workers = workers
        self.metrics = metrics
        self.port = port  # the one the workers serve
        self.restart_backoff = restart_backoff
        self.max_failed_starts = max_failed_starts

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as group:
            for slot in range(self.workers):
                group.create_task(self._keep(slot, stop))

    async def _keep(self, slot: int, stop: asyncio.Event) -> None:
        failed = 0
        while not stop.is_set():
            started = time.monotonic()
            code = await self._run_one(slot, stop)
            if stop.is_set():
                return
            failed = 0 if time.monotonic() - started >= HEALTHY_AFTER_S else failed + 1
            # A passing cause (the data dir full) is waited out, pauses growing.
            if failed >= self.max_failed_starts and code != ingest_worker.EXIT_PASSING:
                raise StreamError(
                    f"ingest workers keep exiting at start ({failed} in a row, last exit "
                    f"code {code}): see their errors above"
                )
            pause = self.restart_backoff.delay(failed - 1) if failed else 0.0
            logger.error(
                "ingest worker exited (code %s); starting a new one in %.0f s",
                code,
                pause,
                extra={"worker": slot},
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await stop.wait()

    async def _run_one(self, slot: int, stop: asyncio.Event) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            ingest_worker.__name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=(self.spec.fd,),
            env=child_environment(),
            # Ctrl-C reaches this process only; the workers stop when it tells them to.
            start_new_session=True,
        )
        assert process.stdout is not None and process.stdin is not None
        channel = Channel(process.stdout, process.stdin)
        reading = asyncio.ensure_future(self._read(slot, channel))
        try:
            with contextlib.suppress(SourceUnavailable):  # it exited at once: see its code
                channel.send("spec", self.spec)
                await channel.flush()
            await until_first(reading, stop)
            if not reading.done():
                signal_child(process, signal.SIGTERM)  # drain: it answers what it accepted
            await reading
            return await process.wait()
        except BaseException:
            signal_child(process, signal.SIGTERM)
            raise
        finally:
            reading.cancel()
            self.metrics.retire(slot)
            process.stdin.close()

    async def _read(self, slot: int, channel: Channel) -> None:
        while (message := await channel.receive()) is not None:
            if message[0] == "metrics":
                self.metrics.update(slot, message[1])


def worker_count(configured: int | None) -> int:
    """``configured``, else half the cores this process may use (at least one): the rest is
    left to processing."""
    if configured is not None:
        return configured
    # Cores this process may run on (a container's CPU set); macOS has no affinity call.
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return max(1, (len(usable) if usable is not None else os.cpu_count() or 1) // 2)


@contextlib.asynccontextmanager
async def ingest_in_workers(
    settings: Settings,
    workers: int,
    port: int,
    ops_routes: Sequence[BaseRoute],
    registry: CollectorRegistry,
    on_status: Callable[[str], None],
) -> AsyncIterator[IngestPool]:
    """Bind the ingest port and serve the processor's ops routes on loopback (at
    ``processor.ops_port``, else any free port) for the workers to forward to; the pool that
    runs the workers is the caller's to ``run``. The workers' ingest metrics join ``registry``."""
    summed = SummedWorkers()
    registry.register(summed)
    auth = settings.ingest.auth
    with (
        listen(settings.ingest.host, port) as sock,
        tempfile.TemporaryDirectory(prefix="evalstream-ingest-") as scratch,
    ):
        async with serving(
            Starlette(routes=list(ops_routes)),
            "127.0.0.1",
            settings.processor.ops_port or 0,
            header_timeout_s=settings.ingest.header_timeout_s,
        ) as ops:
            spec = WorkerSpec(
                settings=settings,
                fd=sock.fileno(),
                ops_url=f"http://127.0.0.1:{bound_port(ops)}",
                rates_path=Path(scratch) / "rates.db" if auth.api_keys or auth.entra else None,
                log_level=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
                log_format=logs.chosen_format(),
            )
            pool = IngestPool(spec, workers, summed, int(sock.getsockname()[1]))
            on_status(
                f"ingest: {workers} worker process{'es' if workers > 1 else ''} serving POST "
                f"http://{settings.ingest.host}:{pool.port}/api/telemetry"
                " (and /healthz, /readyz, /metrics, /report)"
            )
            yield pool
