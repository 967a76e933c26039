"""Long-running commands: signal handling, the processor with optional ingest and simulator."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from starlette.applications import Starlette

from evalstream import coldpath_schedule, wiring
from evalstream.ingest_pool import IngestPool, ingest_in_workers, worker_count
from evalstream.live_report import LiveReport
from evalstream.settings import Settings, SettingsError
from schemas import Breach
from stream.metrics import IngestMetrics
from stream.ops import OpsRoutes
from stream.ports import EventSink
from stream.producers.ingest_auth import require_auth_beyond_loopback
from stream.producers.ingest_server import bound_port, serving
from stream.producers.simulator import Incident, Simulator
from stream.stats import ProcessorStats

logger = logging.getLogger(__name__)

# Appends per second while pacing the simulator: small enough to look continuous.
PACE_TICKS_PER_S = 20


@dataclass(frozen=True)
class SimulatorRun:
    """What ``process --simulate`` asks of the in-process traffic simulator."""

    apps: int
    rate: float
    seed: int
    incidents: Sequence[Incident] = ()
    invalid_fraction: float = 0.0
    count: int | None = None


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT: graceful stop. A second SIGINT exits at once. SIGUSR1: every thread's
    stack to stderr, the process going on (where a stuck one is)."""
    # In C, at the signal: it answers even when the event loop is blocked.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    loop = asyncio.get_running_loop()

    def on_sigint() -> None:
        if stop.is_set():
            logger.warning("second interrupt: exiting without finishing the batch in flight")
            os._exit(130)
        logger.info(
            "interrupt: finishing the batches in flight, then checkpointing (again to abort)"
        )
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    loop.add_signal_handler(signal.SIGTERM, stop.set)


async def pace_simulator(
    simulator: Simulator,
    sink: EventSink,
    rate: float,
    stop: asyncio.Event,
    count: int | None = None,
) -> int:
    """Append simulated events in real time at ``rate``; return how many were sent."""
    sent = 0
    started = time.monotonic()
    chunk: list[tuple[str | None, bytes]] = []
    per_tick = max(1, int(rate / PACE_TICKS_PER_S))
    for event in simulator.events(count):
        if stop.is_set():
            break
        chunk.append((event.app_id, event.body))
        if len(chunk) >= per_tick:
            await sink.append(chunk)
            sent += len(chunk)
            chunk = []
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(ahead):
                        await stop.wait()
    if chunk and not stop.is_set():
        await sink.append(chunk)
        sent += len(chunk)
    return sent


async def run_processor(
    settings: Settings,
    *,
    ingest: bool,
    ingest_port: int | None,
    simulate: SimulatorRun | None,
    until_idle_s: float | None,
    on_status: Callable[[str], None],
    on_breach: Callable[[Breach], None] | None = None,
    workers: int = 1,
    ingest_workers: int | None = None,
) -> ProcessorStats:
    """``workers``: processing worker processes; ``ingest_workers``: processes serving ingest
    (0: this one; None: ``ingest.workers``, else the ``ingest_pool`` default)."""
    refused = ingest and require_auth_beyond_loopback(settings.ingest.host, settings.ingest.auth)
    if refused:
        raise SettingsError(refused)
    scheduled = coldpath_schedule.enabled(settings, simulate is not None)
    catalogue = coldpath_schedule.catalogue_at_start(settings, scheduled)
    stop = asyncio.Event()
    install_signal_handlers(stop)
    stats = ProcessorStats(on_breach=on_breach)
    ingest_count = worker_count(
        settings.ingest.workers if ingest_workers is None else ingest_workers
    )
    in_process = ingest and ingest_count == 0
    pool: IngestPool | None = None
    async with (
        wiring.store(settings) as store,
        wiring.publisher(settings) as publisher,
        contextlib.AsyncExitStack() as stack,
    ):
        # A producer only when something in this process produces (ingest, simulator).
        sink = (
            await stack.enter_async_context(wiring.sink(settings))
            if in_process or simulate is not None
            else None
        )
        processor = wiring.processor(settings, store, stats, publisher, on_status, workers)
        ops = OpsRoutes(stats, store, max_silence_s=settings.processor.ready_max_silence_s)
        ops.routes.extend(LiveReport(settings).routes)
        port = settings.ingest.port if ingest_port is None else ingest_port
        if ingest and not in_process:
            pool = await stack.enter_async_context(
                ingest_in_workers(
                    settings, ingest_count, port, ops.routes, stats.metrics.registry, on_status
                )
            )
        elif ingest and sink is not None:
            app = wiring.ingest_app(
                settings, sink, store, IngestMetrics(stats.metrics.registry), ops.routes
            )
            server = await stack.enter_async_context(
                serving(
                    app.app,
                    settings.ingest.host,
                    port,
                    header_timeout_s=settings.ingest.header_timeout_s,
                )
            )
            on_status(
                f"ingest: POST http://{settings.ingest.host}:{bound_port(server)}/api/telemetry"
                " (and /healthz, /readyz, /metrics, /report)"
            )
        elif settings.processor.ops_port is not None:
            server = await stack.enter_async_context(
                serving(
                    Starlette(routes=ops.routes),
                    settings.ingest.host,
                    settings.processor.ops_port,
                    header_timeout_s=settings.ingest.header_timeout_s,
                )
            )
            on_status(
                f"health and metrics: http://{settings.ingest.host}:{bound_port(server)}"
                "/healthz, /readyz, /metrics, /report"
            )
        # A failure (the processor's: the store set up wrongly; or a task's beside it: the
        # ingest pool's workers failing at start) is kept rather than raised in the group,
        # where it would cancel the rest: the processor cut off mid-batch instead of finishing
        # its batches and checkpointing, the ingest pool's workers killed instead of drained,
        # the simulator cut off mid-append. ``stop`` is set instead, so everything ends as on
        # a signal; then the failures are raised (the processor's first).
        failures: list[Exception] = []
        async with asyncio.TaskGroup() as group:

            def beside(work: Awaitable[None]) -> None:
                group.create_task(_stopping_on_failure(work, stop, failures))

            if pool is not None:
                beside(pool.run(stop))
            if simulate is not None and sink is not None:
                beside(_simulate(simulate, sink, stop, on_status))
            if until_idle_s is not None:
                beside(_stop_when_idle(stats, until_idle_s, stop))
            if settings.azure.monitor.connection_string is not None:
                from evalstream.azure_monitor import AzureMonitorExport

                beside(AzureMonitorExport(settings.azure.monitor, stats).run(stop))
            if catalogue is not None:
                beside(
                    _once_caught_up(
                        stats,
                        stop,
                        lambda: coldpath_schedule.run_schedule_apart(
                            settings, catalogue, stop, on_status, on_breach, stats.metrics
                        ),
                    )
                )
            try:
                await processor.run(stop)
            except Exception as exc:
                failures.insert(0, exc)
            finally:
                stop.set()
        if len(failures) == 1:
            raise failures[0]
        if failures:
            # Something else failed too while stopping: each is said.
            raise ExceptionGroup("processing stopped", failures)
    return stats


async def _stopping_on_failure(
    work: Awaitable[None], stop: asyncio.Event, failures: list[Exception]
) -> None:
    """Run ``work`` beside the processor. If it fails, its error is kept in ``failures`` and
    ``stop`` set: the processor finishes its batches in flight and checkpoints, as on a
    signal, and the error is raised once everything has ended (run_processor)."""
    try:
        await work
    except Exception as exc:
        logger.error("stopping: %s: %s", type(exc).__name__, exc)
        failures.append(exc)
        stop.set()


async def _simulate(
    run: SimulatorRun,
    sink: EventSink,
    stop: asyncio.Event,
    on_status: Callable[[str], None],
) -> None:
    simulator = Simulator(
        apps=run.apps,
        rate=run.rate,
        seed=run.seed,
        start=datetime.now(UTC),
        incidents=run.incidents,
        invalid_fraction=run.invalid_fraction,
    )
    on_status(
        f"simulator: {len(simulator.app_ids)} apps at {run.rate:g} events/s"
        + "".join(f"; incident {incident}" for incident in run.incidents)
    )
    await pace_simulator(simulator, sink, run.rate, stop, run.count)


async def _stop_when_idle(stats: ProcessorStats, idle_s: float, stop: asyncio.Event) -> None:
    """Stop once every partition is caught up and no batch was processed for ``idle_s``.

    The lag is polled (every 0.2 s at most) but the quiet time counts from the last batch's
    own time, and the last wait ends when ``idle_s`` has passed since it: the command stops
    ``idle_s`` after its last batch, not up to a polling interval later.

    While no partition is owned nothing is caught up: a source not reached yet (a namespace
    or checkpoint store unreachable, retried) is not idle, and the run ends with its error
    when it gives up, never with "stopped" and exit 0."""
    last_change = time.monotonic()
    while not stop.is_set():
        lags = await stats.lag()
        now = time.monotonic()
        if not lags or any(lag for lag in lags.values()):
            last_change = now
        if stats.last_batch_at is not None:
            last_change = max(last_change, stats.last_batch_at)
        quiet_s = now - last_change
        if quiet_s >= idle_s:
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.2, idle_s - quiet_s)):
                await stop.wait()


async def _once_caught_up(
    stats: ProcessorStats, stop: asyncio.Event, then: Callable[[], Awaitable[None]]
) -> None:
    """Run ``then`` once every partition has caught up with the backlog found at start: a
    window evaluated earlier would miss its stored events (worker processes take a moment to
    start). An unknown lag (None) does not hold it back."""
    while not stop.is_set():
        lags = await stats.lag()
        if lags and not any(lags.values()):
            await then()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.2):
                await stop.wait()
