"""Event Hubs benchmark: the processor's overhead over the SDK's own receive-only rate.

Run: ``python -m bench.eventhubs [--events N] [--repeats R]``. Starts the project's AMQP test
broker (its own process) and Azurite, sends N simulated ~1.2 KB events to a 4-partition hub
once, then alternates four consumers over the same events, each from the start with a fresh
checkpoint container: the bare SDK (``receive_batch`` with a no-op handler, same client
settings, load balancing and Blob store), the processor as shipped (EventHubsSource in a child
process, Pipeline + SqliteStore here, hot path on), the same with the hot path off, and the
processor receiving in its own process.

Every consumer is timed the same way: its clock starts when the first batch is handed to its
handler (before the processor handles it) and stops when the handler has finished with the
last event, and the rate counts every event. The end-to-end rate counts from creating the
client. Medians of the repeats, with the 1-minute load average measured around each repeat;
written to bench/results/eventhubs.md.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient
from pydantic import SecretStr

from evalstream import wiring
from evalstream.settings import load_settings
from schemas import AppDirectory, Breach
from store.sqlite import SqliteStore
from stream.config import ProcessorSettings
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.pipeline import Pipeline
from stream.ports import CloseReason, EventSource, HotPathFactory, PartitionContext, ReceivedEvent
from stream.producers.simulator import Simulator
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_consumer import SOURCE_NAME, EventHubsSource
from stream.sources.eventhubs_producer import EventHubsSink
from stream.sources.subprocess_source import SubprocessSource
from stream.stats import ProcessorStats
from tests.emulators.npm_fixtures import Azurite, start_azurite
from tests.emulators.processes import ServerProcess, start_server

RESULTS = Path(__file__).parent / "results" / "eventhubs.md"
HUB = "bench"
PARTITIONS = 4
BROKER_READY = re.compile(r"AMQP test broker on [\d.]+:(?P<port>\d+)")
TIMEOUT_S = 600.0


@dataclass
class Run:
    """One consumer pass: seconds from start, from first batch, and events counted."""

    total_s: float
    steady_s: float
    steady_events: int
    # Process CPU seconds over the steady part (this process only: not the broker's), and
    # those of the receiver's child process when there is one.
    steady_cpu_s: float
    steady_child_cpu_s: float = 0.0

    @property
    def steady_rate(self) -> float:
        return self.steady_events / self.steady_s

    @property
    def cpu_us_per_event(self) -> float:
        return self.steady_cpu_s / self.steady_events * 1e6

    @property
    def child_cpu_us_per_event(self) -> float:
        return self.steady_child_cpu_s / self.steady_events * 1e6

    def rate(self, events: int) -> float:
        return events / self.total_s


class Clock:
    """Marks when the first batch was delivered (``start``, before it is handled) and when the
    handler finished with the last expected event (``add`` after each handled batch)."""

    def __init__(self, expected: int, child: Callable[[], int | None] | None = None) -> None:
        self.expected = expected
        self.child = child
        self.count = 0
        self.first: float | None = None
        self.first_cpu = self.first_child_cpu = 0.0
        self.done = asyncio.Event()
        self.finished = 0.0
        self.finished_cpu = self.finished_child_cpu = 0.0

    def _child_cpu(self) -> float:
        pid = self.child() if self.child is not None else None
        return 0.0 if pid is None else process_cpu(pid)

    def start(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            self.first_cpu = time.process_time()
            self.first_child_cpu = self._child_cpu()

    def add(self, size: int) -> None:
        self.count += size
        if self.count >= self.expected and not self.done.is_set():
            self.finished = time.perf_counter()
            self.finished_cpu = time.process_time()
            self.finished_child_cpu = self._child_cpu()
            self.done.set()

    def run(self, started: float) -> Run:
        assert self.first is not None
        return Run(
            self.finished - started,
            self.finished - self.first,
            self.count,
            self.finished_cpu - self.first_cpu,
            self.finished_child_cpu - self.first_child_cpu,
        )


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_bodies(count: int) -> list[tuple[str | None, bytes]]:
    simulator = Simulator(apps=20, seed=42, start=datetime.now(UTC) - timedelta(hours=2))
    return [(event.app_id, event.body) for event in simulator.events(count)]


def settings(connection_string: str, blob: str, container: str) -> EventHubsSettings:
    return EventHubsSettings(
        connection_string=SecretStr(connection_string),
        eventhub_name=HUB,
        checkpoint_connection_string=SecretStr(blob),
        checkpoint_container=container,
        load_balancing_interval_s=1.0,
    )


async def bare_sdk(hub: EventHubsSettings, processor: ProcessorSettings, expected: int) -> Run:
    """receive_batch with a handler that only counts: the SDK's own receive rate."""
    assert hub.connection_string is not None and hub.checkpoint_connection_string is not None
    async with BlobServiceClient.from_connection_string(
        hub.checkpoint_connection_string.get_secret_value()
    ) as blobs:
        await blobs.create_container(hub.checkpoint_container)
    store = BlobCheckpointStore.from_connection_string(
        hub.checkpoint_connection_string.get_secret_value(), hub.checkpoint_container
    )
    clock = Clock(expected)

    async def on_batch(_context: Any, events: list[Any]) -> None:
        if events:
            clock.start()
            clock.add(len(events))

    started = time.perf_counter()
    async with store:
        client = EventHubConsumerClient.from_connection_string(
            hub.connection_string.get_secret_value(),
            eventhub_name=hub.eventhub_name,
            consumer_group=processor.consumer_group,
            checkpoint_store=store,
            load_balancing_interval=hub.load_balancing_interval_s,
            partition_ownership_expiration_interval=hub.partition_ownership_expiration_s,
        )
        async with client:
            task = asyncio.create_task(
                client.receive_batch(
                    on_batch,
                    max_batch_size=processor.batch_size,
                    max_wait_time=processor.batch_wait_s,
                    starting_position="-1",
                    prefetch=hub.prefetch,
                )
            )
            async with asyncio.timeout(TIMEOUT_S):
                await clock.done.wait()
            run = clock.run(started)
            await client.close()
            task.cancel()
            await asyncio.wait([task])
    return run


def bench_pipeline(
    store: SqliteStore,
    processor: ProcessorSettings,
    hot: HotPathFactory | None = None,
    publisher: MemoryPublisher | None = None,
) -> Pipeline:
    """The processor's Pipeline as the benchmark measures it: SQLite store, default apps."""
    return Pipeline(
        store=store,
        decoder=Decoder(),
        enricher=Enricher(AppDirectory(), b"bench-key", SOURCE_NAME),
        consumer_group=processor.consumer_group,
        lateness=timedelta(seconds=processor.lateness_s),
        checkpoint_interval_s=processor.checkpoint_interval_s,
        stats=ProcessorStats(),
        hot_path=hot,
        publisher=publisher,
    )


class CountingPipeline:
    """The real Pipeline, with the clock started at the first delivered batch and told after
    each processed one."""

    def __init__(self, pipeline: Pipeline, clock: Clock) -> None:
        self.pipeline = pipeline
        self.clock = clock

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        await self.pipeline.on_partition_initialize(context)

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        self.clock.start()
        await self.pipeline.on_batch(context, events)
        self.clock.add(len(events))

    async def on_idle(self, context: PartitionContext) -> None:
        await self.pipeline.on_idle(context)

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        await self.pipeline.on_partition_close(context, reason)


class MemoryPublisher:
    """An AlertPublisher that keeps the breaches in memory: the bus is not what is measured."""

    def __init__(self) -> None:
        self.breaches: list[Breach] = []

    async def __aenter__(self) -> MemoryPublisher:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        return None

    async def publish(self, breaches: Sequence[Breach]) -> None:
        self.breaches.extend(breaches)


def hot_path_of(
    processor: ProcessorSettings,
) -> tuple[HotPathFactory | None, MemoryPublisher | None]:
    """The processor's detectors as the command wires them, and an in-memory publisher, when
    the hot path is on."""
    base = load_settings()
    hot = wiring.hot_path(base.model_copy(update={"processor": processor}))
    return hot, (MemoryPublisher() if hot is not None else None)


async def processor_run(
    hub: EventHubsSettings, processor: ProcessorSettings, expected: int, in_process: bool
) -> Run:
    """EventHubsSource + Pipeline + SqliteStore, until every event is processed."""
    source: EventSource
    if in_process:
        source, clock = EventHubsSource(hub, processor), Clock(expected)
    else:
        child = SubprocessSource(functools.partial(EventHubsSource, hub, processor))
        source, clock = child, Clock(expected, lambda: child.child_pid)
    hot, publisher = hot_path_of(processor)
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteStore(Path(folder) / "store.db") as store:
            pipeline = bench_pipeline(store, processor, hot, publisher)
            stop = asyncio.Event()
            started = time.perf_counter()
            task = asyncio.create_task(source.run(CountingPipeline(pipeline, clock), stop))
            async with asyncio.timeout(TIMEOUT_S):
                done = asyncio.create_task(clock.done.wait())
                await asyncio.wait([task, done], return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    task.result()
                    raise RuntimeError("the source stopped before every event was processed")
            run = clock.run(started)
            stop.set()
            await task
            if await store.count("telemetry") + await store.count("quarantine") != expected:
                raise RuntimeError("the store does not hold every event")
    return run


class _Context:
    """A PartitionContext with nothing behind it, for the pipeline measured alone."""

    rewindable = False

    def __init__(self, partition_id: str) -> None:
        self.partition_id = partition_id

    async def checkpoint(self, event: ReceivedEvent) -> None:
        return None

    async def owned(self) -> bool:
        return True

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return None

    async def resume_after(self, sequence: int) -> bool:
        return False


async def pipeline_alone(
    bodies: list[tuple[str | None, bytes]], processor: ProcessorSettings
) -> float:
    """CPU µs per event of Pipeline.on_batch over the same bodies, without any source."""
    now = datetime.now(UTC)
    events = [ReceivedEvent(body, "0", i, now, str(i)) for i, (_, body) in enumerate(bodies)]
    hot, publisher = hot_path_of(processor)
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteStore(Path(folder) / "store.db") as store:
            pipeline = bench_pipeline(store, processor, hot, publisher)
            context = _Context("0")
            await pipeline.on_partition_initialize(context)
            cpu = time.process_time()
            for start in range(0, len(events), 250):
                await pipeline.on_batch(context, events[start : start + 250])
            cpu = time.process_time() - cpu
            await pipeline.on_partition_close(context, CloseReason.SHUTDOWN)
    return cpu / len(events) * 1e6


def orjson_loads(bodies: list[tuple[str | None, bytes]]) -> float:
    """CPU µs per event of orjson.loads on the same bodies: this machine's speed reference."""
    cpu = time.process_time()
    for _, body in bodies:
        orjson.loads(body)
    return (time.process_time() - cpu) / len(bodies) * 1e6


def start_broker(log_dir: Path) -> ServerProcess:
    command = [sys.executable, "-m", "tests.emulators.amqp", "--port", "0"]
    command += ["--hub", f"{HUB}:{PARTITIONS}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return start_server(
        "amqp-broker",
        command,
        ready=BROKER_READY,
        log_dir=log_dir,
        cwd=Path(__file__).resolve().parents[1],
        env=env,
    )


@dataclass(frozen=True)
class Consumer:
    label: str
    in_process: bool = False
    hot_path: bool = True


# The consumers of each repeat, in this order (rotated per repeat): the bare SDK, the
# processor as shipped (receiving in a child process, hot path on, the default), the same with
# the hot path off, and the processor receiving in its own process.
CONSUMERS = {
    "sdk": Consumer("bare SDK, no-op `receive_batch` handler"),
    "processor": Consumer(
        "**processor as shipped**: EventHubsSource in a child process → Pipeline + SQLite, "
        "hot path on"
    ),
    "store-only": Consumer("the same, hot path off", hot_path=False),
    "inline": Consumer(
        "processor receiving in one process (`receive_in_child_process=false`), hot path on",
        in_process=True,
    ),
}
TARGET = 0.20


def rotated(names: Sequence[str], repeat: int) -> list[str]:
    """The consumers' order in a repeat: shifted by one each time, so none is always first
    after a pause or last before the next repeat."""
    shift = repeat % len(names)
    return [*names[shift:], *names[:shift]]


async def measure(broker_port: int, blob: str, events: int, repeats: int) -> dict[str, Any]:
    connection = (
        f"Endpoint=sb://127.0.0.1:{broker_port}/;SharedAccessKeyName=k;"
        f"SharedAccessKey=a2V5;UseDevelopmentEmulator=true"
    )
    bodies = make_bodies(events)
    sent = time.perf_counter()
    async with EventHubsSink(settings(connection, blob, "unused")) as sink:
        for start in range(0, len(bodies), 1000):
            await sink.append(bodies[start : start + 1000])
    send_s = time.perf_counter() - sent
    runs: dict[str, list[Run]] = {name: [] for name in CONSUMERS}
    loads: list[str] = []
    for repeat in range(repeats):
        before = os.getloadavg()[0]
        # Interleaved and rotated so that drift of the shared machine's load hits every
        # consumer alike.
        for name in rotated(list(CONSUMERS), repeat):
            consumer = CONSUMERS[name]
            hub = settings(connection, blob, f"bench-{name}-{repeat}")
            processor = ProcessorSettings(hot_path=consumer.hot_path)
            if name == "sdk":
                run = await bare_sdk(hub, processor, events)
            else:
                run = await processor_run(hub, processor, events, consumer.in_process)
            runs[name].append(run)
        loads.append(f"{before:.2f} → {os.getloadavg()[0]:.2f}")
        print(
            f"repeat {repeat + 1}/{repeats} (load {loads[-1]}): "
            + ", ".join(
                f"{name} {runs[name][-1].steady_rate:,.0f} ev/s "
                f"(cpu/event {runs[name][-1].cpu_us_per_event:,.0f} µs"
                f" + child {runs[name][-1].child_cpu_us_per_event:,.0f} µs)"
                for name in CONSUMERS
            ),
            file=sys.stderr,
        )
    alone = {
        hot_path: [
            await pipeline_alone(bodies, ProcessorSettings(hot_path=hot_path))
            for _ in range(repeats)
        ]
        for hot_path in (True, False)
    }
    reference = [orjson_loads(bodies) for _ in range(repeats)]
    result: dict[str, Any] = {
        "events": events,
        "repeats": repeats,
        "mean_body_bytes": statistics.fmean(len(body) for _, body in bodies),
        "send_rate": events / send_s,
        "pipeline_cpu": statistics.median(alone[True]),
        "pipeline_cpu_store_only": statistics.median(alone[False]),
        "orjson_cpu": statistics.median(reference),
        "orjson_runs": reference,
        "loads": loads,
    }
    for name, measured in runs.items():
        result[name] = {
            "steady": statistics.median(r.steady_rate for r in measured),
            "total": statistics.median(r.rate(events) for r in measured),
            "cpu": statistics.median(r.cpu_us_per_event for r in measured),
            "child_cpu": statistics.median(r.child_cpu_us_per_event for r in measured),
            "runs": [r.steady_rate for r in measured],
        }
    return result


def overhead(result: dict[str, Any], name: str, key: str) -> float:
    """Time per event over the bare SDK's: rate(SDK) / rate(consumer) − 1."""
    return float(result["sdk"][key] / result[name][key] - 1)


def report(result: dict[str, Any]) -> str:
    def shown(name: str, key: str) -> str:
        return "–" if name == "sdk" else f"{overhead(result, name, key):+.1%}"

    rows = [
        f"| {consumer.label} | {result[name]['steady']:,.0f} | {shown(name, 'steady')} | "
        f"{result[name]['total']:,.0f} | {shown(name, 'total')} | "
        f"{result[name]['cpu']:,.0f} | {result[name]['child_cpu']:,.0f} |"
        for name, consumer in CONSUMERS.items()
    ]
    per_repeat = "; ".join(
        f"{name} " + ", ".join(f"{r:,.0f}" for r in result[name]["runs"]) for name in CONSUMERS
    )

    def verdict(name: str) -> str:
        return "**met**" if overhead(result, name, "steady") <= TARGET else "**not met**"

    return "\n".join(
        [
            "# Event Hubs: processor overhead over the SDK's receive-only rate",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
            f"{os.cpu_count()} cores (shared), Python {platform.python_version()}, "
            "azure-eventhub 5.15.1 (pyamqp), against the project's AMQP test broker in its own "
            "process and Azurite for the Blob checkpoint store; 1-minute load average before → "
            f"after each repeat: {'; '.join(result['loads'])}.",
            f"`python -m bench.eventhubs --events {result['events']} --repeats "
            f"{result['repeats']}`: {result['events']:,} simulated events (mean body "
            f"{result['mean_body_bytes']:,.0f} bytes, 20 apps) on a 4-partition hub, sent once "
            f"by EventHubsSink ({result['send_rate']:,.0f} events/s), then read from the start "
            "by each consumer in turn, interleaved and rotated, fresh checkpoint container each "
            "pass. Settings: batch_size 1000, batch_wait_s 0.1, prefetch 300, "
            "checkpoint_interval_s 1.0; with the hot path on, breaches go to an in-memory "
            "publisher.",
            "",
            "Every consumer is timed the same way: from the moment its first batch is handed to "
            "its handler (before the processor handles it) to the moment its handler has "
            "finished with the last event, counting every event; the start-up column counts "
            "from creating the client.",
            "",
            "| consumer | events/s from first batch (median) | overhead | events/s incl. "
            "start-up (median) | overhead | CPU µs/event, main process | CPU µs/event, child |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
            *rows,
            "",
            "Overhead is the time per event over the bare SDK's: rate(SDK) / rate(consumer) − 1. "
            f"Per repeat, from the first batch: {per_repeat}.",
            "",
            "The Pipeline alone on the same bodies (batches of 250, SQLite store, no source) "
            f"costs {result['pipeline_cpu']:,.0f} µs CPU/event with the hot path on, "
            f"{result['pipeline_cpu_store_only']:,.0f} µs with it off; `orjson.loads` of one "
            f"body {result['orjson_cpu']:.1f} µs (this run's reference; runs "
            + ", ".join(f"{value:.1f}" for value in result["orjson_runs"])
            + ").",
            "",
            f"Target (DESIGN.md, issue 5): overhead ≤ {TARGET:.0%} over the SDK's own "
            f"receive-only rate, for the processor as shipped: {verdict('processor')} "
            f"(hot path off: {verdict('store-only')}).",
            "",
            "Reading: the SDK's pure-Python AMQP receive costs about as much CPU per event as "
            "the Pipeline. In one process the two take turns on one core (the `inline` row). "
            "As shipped, the SDK consumer runs in a child process that forwards batches as "
            "columns over a pipe and writes the checkpoints the Pipeline asks for; the Pipeline "
            "runs in the main process, on the other core. The start-up column includes starting "
            "that child (a Python interpreter importing the SDK).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eventhubs", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logs:
        broker = start_broker(Path(logs))
        azurite = start_azurite(Path(logs))
        try:
            blob = Azurite(port=azurite.port).connection_string
            result = asyncio.run(measure(broker.port, blob, args.events, args.repeats))
        finally:
            azurite.stop()
            broker.stop()
    text = report(result)
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
