"""The cold path inside ``evalstream process`` (embedded demo): every few seconds, evaluate
the windows that became due, in this process, and report each evaluation breach. It runs on a
thread of its own, with its own event loop and store connections (``run_schedule_apart``).

Enabled by ``coldpath.schedule_in_process`` (unset: only when the processor runs its
simulator). When no configured policy has a window of a few minutes, the short ``demo``
policy (one-minute windows) is added, so results appear within the demo's first minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType

from alerts.ports import AlertPublisher
from coldpath.config import DEMO_POLICY
from coldpath.exceptions import PolicyConfigError
from coldpath.executors.inline import InlineExecutor
from coldpath.policies.base import Metric
from coldpath.runner import ShardRunner
from coldpath.trigger import WindowChoice, plan, submit
from common.errors import EvalstreamError
from common.log_context import log_context
from common.retry import until_first
from evalstream import wiring
from evalstream.settings import Settings
from schemas import Breach, EvaluationPolicy
from store.ports import EvaluationStore, TelemetryStore
from stream.metrics import ProcessorMetrics

logger = logging.getLogger(__name__)

SHORT_WINDOW = timedelta(minutes=5)


def enabled(settings: Settings, simulating: bool) -> bool:
    configured = settings.coldpath.schedule_in_process
    return simulating if configured is None else configured


def catalogue_at_start(settings: Settings, scheduled: bool) -> Mapping[str, Metric] | None:
    """The metric catalogue, the policies checked against it when the processor starts.

    Scheduled in process, a policy the catalogue refuses stops the processor
    (``PolicyConfigError``): a typo must not leave a long-running service whose evaluations
    never run. Not scheduled, the processor has no use for the policies but its ``/report``
    (their prices), which refuses them too: a warning says so at start, and None is returned.
    """
    if scheduled:
        return wiring.metric_catalogue(settings)
    try:
        wiring.metric_catalogue(settings)
    except PolicyConfigError as exc:
        logger.warning(
            "cold path policies refused (%s): not scheduled in this process; /report and the "
            "coldpath commands refuse to run until the setting is fixed",
            exc,
        )
    return None


def demo_policies(settings: Settings) -> list[EvaluationPolicy]:
    policies = list(settings.coldpath.policies)
    if not any(policy.window <= SHORT_WINDOW for policy in policies):
        policies.append(DEMO_POLICY)
    return policies


class _Reporting:
    """An AlertPublisher wrapper that also tells the caller about each breach."""

    def __init__(self, inner: AlertPublisher, on_breach: Callable[[Breach], None] | None) -> None:
        self.inner = inner
        self.on_breach = on_breach

    async def __aenter__(self) -> _Reporting:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.inner.__aexit__(exc_type, exc, tb)

    async def publish(self, breaches: Sequence[Breach]) -> None:
        await self.inner.publish(breaches)
        for breach in breaches:
            if self.on_breach is not None:
                self.on_breach(breach)


async def run_schedule(
    settings: Settings,
    catalogue: Mapping[str, Metric],
    telemetry: TelemetryStore,
    stop: asyncio.Event,
    on_status: Callable[[str], None],
    on_breach: Callable[[Breach], None] | None = None,
    metrics: ProcessorMetrics | None = None,
) -> None:
    """Until ``stop``: evaluate the newly due windows every ``coldpath.schedule_interval_s``
    (``catalogue``: from ``catalogue_at_start``, the policies checked against it)."""
    policies = [p for p in demo_policies(settings) if all(s.metric in catalogue for s in p.metrics)]
    on_status(
        "cold path: evaluating "
        + ", ".join(f"{p.name} (every {p.window})" for p in policies)
        + " in process"
    )
    async with (
        wiring.evaluation_store(settings) as evaluations,
        wiring.alert_publisher(settings) as publisher,
    ):
        runner = ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=_Reporting(publisher, on_breach),
            catalogue=catalogue,
            apps=settings.apps,
            page_size=settings.coldpath.page_size,
        )
        executor = InlineExecutor(runner)
        # Per policy, where the next pass starts looking for due windows: windows missed while
        # the processor was down are caught up (within ``schedule_catch_up``), and each window
        # is planned once per process rather than on every pass.
        started = datetime.now(UTC) - settings.coldpath.schedule_catch_up
        cursors = {policy.name: started for policy in policies}
        while not stop.is_set():
            try:
                for policy in policies:
                    await _evaluate_due(
                        policy, cursors, evaluations, executor, settings, on_status, metrics
                    )
            except asyncio.CancelledError:
                raise
            except EvalstreamError as exc:
                logger.warning("cold path schedule: %s", exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.coldpath.schedule_interval_s):
                    await stop.wait()


async def run_schedule_apart(
    settings: Settings,
    catalogue: Mapping[str, Metric],
    stop: asyncio.Event,
    on_status: Callable[[str], None],
    on_breach: Callable[[Breach], None] | None = None,
    metrics: ProcessorMetrics | None = None,
) -> None:
    """``run_schedule`` on a thread of its own, with its own event loop and telemetry store,
    until ``stop`` (of the calling loop); its failure is raised here.

    An evaluation reads and validates every document of its window and computes its metrics:
    seconds of CPU for a busy minute (3,000 events/s: the caller's loop stood still for 4-10
    s every minute, measured). On the caller's loop that would hold everything else on it for
    as long: the simulator's appends, in-process ingest, the ops routes, reading the processing
    workers' heartbeats. On a thread the interpreter switches between them every few
    milliseconds instead. ``on_status``, ``on_breach`` and ``metrics`` are called from that
    thread (logging and the metrics are thread-safe)."""
    # The thread's loop is made here, so this loop can tell it to stop at any time: a
    # callback handed to it before it runs waits for it to start.
    runner = asyncio.Runner(loop_factory=asyncio.new_event_loop)
    other = runner.get_loop()
    stopping = asyncio.Event()  # bound to the loop that first waits on it: the thread's

    async def apart() -> None:
        async with wiring.store(settings) as telemetry:
            await run_schedule(
                settings, catalogue, telemetry, stopping, on_status, on_breach, metrics
            )

    def run() -> None:
        with runner:
            runner.run(apart())

    thread = asyncio.ensure_future(asyncio.to_thread(run))
    try:
        await until_first(thread, stop)
    finally:
        with contextlib.suppress(RuntimeError):  # its loop has closed already
            other.call_soon_threadsafe(stopping.set)
        # The thread finishes its evaluation in progress and closes its stores before this
        # returns (the process exits only after).
        await asyncio.shield(thread)


async def _evaluate_due(
    policy: EvaluationPolicy,
    cursors: dict[str, datetime],
    evaluations: EvaluationStore,
    executor: InlineExecutor,
    settings: Settings,
    on_status: Callable[[str], None],
    metrics: ProcessorMetrics | None,
) -> None:
    now = datetime.now(UTC)
    choice = WindowChoice(last=False, range_start=cursors[policy.name], range_end=now)
    manifests = await plan(
        [policy],
        choice,
        evaluations,
        now=now,
        group_size=settings.coldpath.group_size,
        code_version=wiring.code_version(),
    )
    for manifest in manifests:
        with log_context(job_id=manifest.id):
            for report in await submit([manifest], evaluations, executor):
                for index, error in report.failed.items():
                    on_status(f"cold path: shard {index} of {report.manifest_id} failed: {error}")
                if metrics is not None:
                    metrics.coldpath_jobs.labels(policy.name).inc()
                    metrics.coldpath_shards.labels("succeeded").inc(len(report.succeeded))
                    metrics.coldpath_shards.labels("failed").inc(len(report.failed))
    if manifests:
        cursors[policy.name] = manifests[-1].window.end
