"""Event Hubs benchmark: the processor's overhead over the SDK's own receive-only rate.

Run: ``python -m bench.eventhubs [--events N] [--repeats R] [--hot-path]``. Starts the project's
AMQP test broker (its own process) and Azurite, sends N simulated ~1.2 KB events to a
4-partition hub once, then alternates two consumers over the same events, each from the start
with a fresh checkpoint container: the bare SDK (``receive_batch`` with a no-op handler, same
client settings, load balancing and Blob store) and the processor end to end (EventHubsSource +
Pipeline + SqliteStore). Rates are events/s from the first delivered batch to the last event
(client start-up excluded) and end to end; medians of the repeats; written to
bench/results/eventhubs.md.
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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import BlobServiceClient
from pydantic import SecretStr

from evalstream.settings import EventHubsSettings, ProcessorSettings
from schemas import AppDirectory, Breach
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.eventhubs import SOURCE_NAME, EventHubsSink, EventHubsSource
from stream.pipeline import HotPathFactory, Pipeline
from stream.ports import CloseReason, EventSource, PartitionContext, ReceivedEvent
from stream.simulator import Simulator
from stream.stats import ProcessorStats
from stream.subprocess_source import SubprocessSource
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
    # Process CPU seconds over the steady part (this process only: not the broker's).
    steady_cpu_s: float

    @property
    def steady_rate(self) -> float:
        return self.steady_events / self.steady_s

    @property
    def cpu_us_per_event(self) -> float:
        return self.steady_cpu_s / self.steady_events * 1e6

    def rate(self, events: int) -> float:
        return events / self.total_s


class Clock:
    """Marks the first delivered batch and the moment the last expected event arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first: float | None = None
        self.first_cpu = 0.0
        self.first_size = 0
        self.done = asyncio.Event()
        self.finished = 0.0
        self.finished_cpu = 0.0

    def add(self, size: int) -> None:
        if self.first is None:
            self.first, self.first_size = time.perf_counter(), size
            self.first_cpu = time.process_time()
        self.count += size
        if self.count >= self.expected and not self.done.is_set():
            self.finished = time.perf_counter()
            self.finished_cpu = time.process_time()
            self.done.set()

    def run(self, started: float) -> Run:
        assert self.first is not None
        return Run(
            self.finished - started,
            self.finished - self.first,
            self.count - self.first_size,
            self.finished_cpu - self.first_cpu,
        )


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


class CountingPipeline:
    """The real Pipeline, with the clock told after each processed batch."""

    def __init__(self, pipeline: Pipeline, clock: Clock) -> None:
        self.pipeline = pipeline
        self.clock = clock

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        await self.pipeline.on_partition_initialize(context)

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        await self.pipeline.on_batch(context, events)
        self.clock.add(len(events))

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        await self.pipeline.on_partition_close(context, reason)


class MemoryPublisher:
    def __init__(self) -> None:
        self.breaches: list[Breach] = []

    async def publish(self, breaches: Sequence[Breach]) -> None:
        self.breaches.extend(breaches)


async def processor_run(
    hub: EventHubsSettings,
    processor: ProcessorSettings,
    expected: int,
    hot_path: bool,
    in_process: bool,
) -> Run:
    """EventHubsSource + Pipeline + SqliteStore, until every event is processed."""
    clock = Clock(expected)
    hot: HotPathFactory | None = None
    publisher = None
    if hot_path:
        from stream.hotpath import HotPath

        apps = AppDirectory()

        def build(blob: bytes | None) -> HotPath:
            return HotPath.restore(apps, blob) if blob else HotPath(apps)

        hot, publisher = build, MemoryPublisher()
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteStore(Path(folder) / "store.db") as store:
            pipeline = Pipeline(
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
            stop = asyncio.Event()
            source: EventSource = (
                EventHubsSource(hub, processor)
                if in_process
                else SubprocessSource(functools.partial(EventHubsSource, hub, processor))
            )
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

    def __init__(self, partition_id: str) -> None:
        self.partition_id = partition_id

    async def checkpoint(self, event: ReceivedEvent) -> None:
        return None

    async def last_enqueued_sequence(self) -> int | None:
        return None

    async def checkpointed_sequence(self) -> int | None:
        return None


async def pipeline_alone(
    bodies: list[tuple[str | None, bytes]], processor: ProcessorSettings
) -> float:
    """CPU µs per event of Pipeline.on_batch over the same bodies, without any source."""
    now = datetime.now(UTC)
    events = [ReceivedEvent(body, "0", i, now, str(i)) for i, (_, body) in enumerate(bodies)]
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteStore(Path(folder) / "store.db") as store:
            pipeline = Pipeline(
                store=store,
                decoder=Decoder(),
                enricher=Enricher(AppDirectory(), b"bench-key", SOURCE_NAME),
                consumer_group=processor.consumer_group,
                lateness=timedelta(seconds=processor.lateness_s),
                checkpoint_interval_s=processor.checkpoint_interval_s,
                stats=ProcessorStats(),
            )
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


async def measure(
    broker_port: int, blob: str, events: int, repeats: int, hot_path: bool, in_process: bool
) -> dict[str, Any]:
    connection = (
        f"Endpoint=sb://127.0.0.1:{broker_port}/;SharedAccessKeyName=k;"
        f"SharedAccessKey=a2V5;UseDevelopmentEmulator=true"
    )
    processor = ProcessorSettings(hot_path=hot_path)
    bodies = make_bodies(events)
    sent = time.perf_counter()
    async with EventHubsSink(settings(connection, blob, "unused")) as sink:
        for start in range(0, len(bodies), 1000):
            await sink.append(bodies[start : start + 1000])
    send_s = time.perf_counter() - sent
    sdk_runs: list[Run] = []
    processor_runs: list[Run] = []
    for repeat in range(repeats):
        # Alternate so that drift of the shared machine's load hits both sides alike.
        hub = settings(connection, blob, f"bench-sdk-{repeat}")
        sdk_runs.append(await bare_sdk(hub, processor, events))
        hub = settings(connection, blob, f"bench-proc-{repeat}")
        processor_runs.append(await processor_run(hub, processor, events, hot_path, in_process))
        print(
            f"repeat {repeat + 1}/{repeats}: sdk {sdk_runs[-1].steady_rate:,.0f} ev/s, "
            f"processor {processor_runs[-1].steady_rate:,.0f} ev/s (from the first batch); "
            f"cpu/event sdk {sdk_runs[-1].cpu_us_per_event:,.0f} µs, "
            f"processor {processor_runs[-1].cpu_us_per_event:,.0f} µs",
            file=sys.stderr,
        )
    alone = [await pipeline_alone(bodies, processor) for _ in range(repeats)]
    reference = [orjson_loads(bodies) for _ in range(repeats)]
    mean_size = statistics.fmean(len(body) for _, body in bodies)
    return {
        "events": events,
        "repeats": repeats,
        "mean_body_bytes": mean_size,
        "send_rate": events / send_s,
        "sdk_steady": statistics.median(r.steady_rate for r in sdk_runs),
        "processor_steady": statistics.median(r.steady_rate for r in processor_runs),
        "sdk_total": statistics.median(r.rate(events) for r in sdk_runs),
        "processor_total": statistics.median(r.rate(events) for r in processor_runs),
        "sdk_cpu": statistics.median(r.cpu_us_per_event for r in sdk_runs),
        "processor_cpu": statistics.median(r.cpu_us_per_event for r in processor_runs),
        "pipeline_cpu": statistics.median(alone),
        "orjson_cpu": statistics.median(reference),
        "sdk_runs": [r.steady_rate for r in sdk_runs],
        "processor_runs": [r.steady_rate for r in processor_runs],
        "hot_path": hot_path,
    }


def report(result: dict[str, Any]) -> str:
    steady = result["sdk_steady"] / result["processor_steady"] - 1
    total = result["sdk_total"] / result["processor_total"] - 1
    remainder = result["processor_cpu"] - result["sdk_cpu"] - result["pipeline_cpu"]
    runs_sdk = ", ".join(f"{r:,.0f}" for r in result["sdk_runs"])
    runs_proc = ", ".join(f"{r:,.0f}" for r in result["processor_runs"])
    return "\n".join(
        [
            "# Event Hubs: processor overhead over the SDK's receive-only rate",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {platform.machine()}, "
            f"{os.cpu_count()} cores (shared), Python {platform.python_version()}, "
            "azure-eventhub 5.15.1 (pyamqp), against the project's AMQP test broker in its own "
            "process and Azurite for the Blob checkpoint store.",
            f"`python -m bench.eventhubs --events {result['events']} --repeats "
            f"{result['repeats']}{' --hot-path' if result['hot_path'] else ''}`: "
            f"{result['events']:,} simulated events (mean body {result['mean_body_bytes']:,.0f} "
            f"bytes) on a 4-partition hub, sent once by EventHubsSink "
            f"({result['send_rate']:,.0f} events/s), then read from the start by each consumer "
            "in turn, alternating, fresh checkpoint container each pass. Settings: batch_size "
            "1000, batch_wait_s 0.1, prefetch 300, checkpoint_interval_s 1.0, hot path "
            f"{'on' if result['hot_path'] else 'off'}.",
            "",
            "| consumer | events/s from first batch (median) | events/s incl. start-up (median) |",
            "| --- | ---: | ---: |",
            f"| bare SDK, no-op `receive_batch` handler | {result['sdk_steady']:,.0f} | "
            f"{result['sdk_total']:,.0f} |",
            f"| EventHubsSource + Pipeline + SqliteStore | {result['processor_steady']:,.0f} | "
            f"{result['processor_total']:,.0f} |",
            f"| **processor overhead** (time per event) | **{steady:+.1%}** | {total:+.1%} |",
            "",
            "CPU of the consuming process per event over the same span (median; the broker runs "
            f"in its own process): bare SDK {result['sdk_cpu']:,.0f} µs, processor "
            f"{result['processor_cpu']:,.0f} µs; the Pipeline alone on the same bodies "
            f"(batches of 250, SQLite store, no source) {result['pipeline_cpu']:,.0f} µs; the "
            f"remainder, {remainder:,.0f} µs, is the adapter (event conversion, batch "
            "gathering, Blob checkpoints) plus "
            "the interference of the two workloads in one process. Reference in the same run: "
            f"`orjson.loads` of one body {result['orjson_cpu']:.1f} µs.",
            "",
            f"Per repeat, from the first batch: SDK {runs_sdk}; processor {runs_proc}.",
            "",
            "Target (DESIGN.md): overhead ≤ 20% over the SDK's own receive-only rate: "
            + ("met." if steady <= 0.20 else "**not met**."),
            "Reading: the consuming process is CPU-bound on this shared machine, so the "
            "overhead in time follows the CPU added per event. The SDK's pure-Python AMQP "
            "receive and the Pipeline (decode, validate, enrich, SQLite upsert) run in one "
            "event loop, one after the other; the Pipeline's own cost per event is of the "
            "same order as the SDK's receive cost, and the adapter's share is the remainder "
            "above. A ratio of 20% would need the Pipeline at a fifth of the SDK's receive "
            "cost per event, or the two on separate cores.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eventhubs", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hot-path", action="store_true")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="receive in the processor's own process (the default receives in a child process)",
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not write results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as logs:
        broker = start_broker(Path(logs))
        azurite = start_azurite(Path(logs))
        try:
            blob = Azurite(port=azurite.port).connection_string
            result = asyncio.run(
                measure(
                    broker.port, blob, args.events, args.repeats, args.hot_path, args.in_process
                )
            )
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
