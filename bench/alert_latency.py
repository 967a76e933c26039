"""Alert latency: from the event that opens (or resolves) a breach being ingested to the breach
reaching a subscriber, at a sustained simulated rate, on the embedded backend.

Run: ``python -m bench.alert_latency [--rate 5000] [--seconds 60]``. The benchmark is the
producer (it appends simulated events to the log in real time and records when each was
appended) and the subscriber (it receives from the ``all`` subscription with peek-lock); the
processor runs as its own process, as in production. The detector's statistical delay (events
it needs after an incident starts) is reported apart: the latency measured here starts at the
event whose observation triggered the breach. Results: bench/results/alert_latency.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alerts.sqlite_bus import SqliteAlertReceiver
from evalstream.settings import DEFAULT_PARTITIONS
from schemas import Breach, BreachState
from stream.producers.simulator import Incident, Simulator
from stream.sources.local_log import LocalLogSink

RESULTS = Path(__file__).parent / "results" / "alert_latency.md"
TICKS_PER_S = 50


def incidents(seconds: float) -> list[Incident]:
    """Incidents spread over the run, on different apps, each starting after a warm-up."""
    span = seconds / 6
    return [
        Incident.parse(f"latency_regression:app-001@{span:.0f}+{span:.0f}x4"),
        Incident.parse(f"error_burst:app-002@{2 * span:.0f}+{span:.0f}x0.5"),
        Incident.parse(f"latency_regression:app-003@{3 * span:.0f}+{span:.0f}x6"),
        Incident.parse(f"score_drift:app-000@{4 * span:.0f}+{span:.0f}x-5"),
    ]


async def produce(
    sink: LocalLogSink,
    simulator: Simulator,
    rate: float,
    count: int,
    appended: dict[datetime, float],
) -> float:
    """Append events in real time; remember when each event time was appended."""
    per_tick = max(1, int(rate / TICKS_PER_S))
    started = time.monotonic()
    sent = 0
    chunk: list[tuple[str | None, bytes]] = []
    times: list[datetime] = []
    for event in simulator.events(count):
        chunk.append((event.app_id, event.body))
        times.append(event.event_time)
        if len(chunk) == per_tick:
            await sink.append(chunk)
            now = time.monotonic()
            for when in times:
                appended[when] = now
            sent += len(chunk)
            chunk, times = [], []
            ahead = started + sent / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent / (time.monotonic() - started)


async def subscribe(
    path: Path, received: dict[str, tuple[Breach, float]], stop: asyncio.Event
) -> None:
    while not path.exists():
        await asyncio.sleep(0.05)
    async with SqliteAlertReceiver(path, "all") as receiver:
        while not stop.is_set():
            for alert in await receiver.receive(max_count=100, max_wait_s=0.2):
                received.setdefault(alert.message_id, (alert.breach, time.monotonic()))
                await receiver.complete(alert)


async def wait_ready(data_dir: Path, processor: subprocess.Popen[bytes]) -> None:
    """Start producing only once the processor holds its lock and has opened its store."""
    lock = data_dir / "processor.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text().strip() == str(processor.pid)):
        if processor.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the processor did not start")
        await asyncio.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(rate: float, seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        env = {**os.environ, "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "1"}
        processor = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "evalstream",
                "process",
                "--data-dir",
                str(data_dir),
                "--no-ingest",
                "--log-level",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            await wait_ready(data_dir, processor)
            script = incidents(seconds)
            start = datetime.now(UTC)
            simulator = Simulator(apps=10, rate=rate, seed=5, start=start, incidents=script)
            appended: dict[datetime, float] = {}
            received: dict[str, tuple[Breach, float]] = {}
            stop = asyncio.Event()
            async with LocalLogSink(data_dir / "log.db", DEFAULT_PARTITIONS) as sink:
                listener = asyncio.create_task(subscribe(data_dir / "alerts.db", received, stop))
                achieved = await produce(sink, simulator, rate, int(rate * seconds), appended)
                await asyncio.sleep(3)  # let the last breaches of the run arrive
                stop.set()
                await listener
        finally:
            processor.send_signal(signal.SIGTERM)
            processor.wait(timeout=60)
    latencies = []
    for breach, at in received.values():
        if breach.state is BreachState.OPENED:
            trigger = breach.opened_at
        elif breach.state is BreachState.RESOLVED:
            trigger = breach.resolved_at
        else:  # escalated by the event at the end of its window
            trigger = breach.window_end
        if trigger in appended:
            latencies.append(at - appended[trigger])
    return {
        "achieved_rate": achieved,
        "latencies": latencies,
        "breaches": len(received),
        "delays": detector_delays(start, script, [breach for breach, _ in received.values()]),
    }


def detector_delays(
    start: datetime, script: list[Incident], breaches: list[Breach]
) -> dict[str, float]:
    """Event-time seconds from each incident's start to the first breach opened on its app."""
    delays = {}
    for incident in script:
        began = start + timedelta(seconds=incident.start_s)
        opened = [
            (breach.opened_at - began).total_seconds()
            for breach in breaches
            if breach.app_id == incident.app_id
            and breach.state is BreachState.OPENED
            and breach.opened_at >= began
        ]
        delays[f"{incident.kind} on {incident.app_id}"] = min(opened, default=float("nan"))
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    result = asyncio.run(run(args.rate, args.seconds))
    load = f"{load_before:.2f} → {os.getloadavg()[0]:.2f}"
    latencies: list[float] = result["latencies"]  # type: ignore[assignment]
    lines = [
        "# Alert latency (embedded backend)",
        "",
        f"Command: `python -m bench.alert_latency --rate {args.rate:g} --seconds {args.seconds:g}`",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; shared 2-core machine (1-minute load "
        f"average before → after: {load}), processor in its own process, producer and "
        "subscriber in the benchmark process.",
        f"Producer rate achieved: {result['achieved_rate']:,.0f} events/s; breach messages "
        f"received: {result['breaches']}; with a measurable trigger: {len(latencies)}.",
        "",
    ]
    if latencies:
        p50, p90 = statistics.median(latencies) * 1000, percentile(latencies, 0.9) * 1000
        p99, worst = percentile(latencies, 0.99) * 1000, max(latencies) * 1000
        lines += [
            "Latency from the triggering event's append to the subscriber's receive:",
            "",
            "| p50 | p90 | p99 | max | n |",
            "| --- | --- | --- | --- | --- |",
            f"| {p50:.0f} ms | {p90:.0f} ms | {p99:.0f} ms | {worst:.0f} ms | {len(latencies)} |",
            "",
        ]
    delays: dict[str, float] = result["delays"]  # type: ignore[assignment]
    lines += [
        "Detector statistical delay (incident start → first breach opened on that app, "
        "event time):",
        "",
    ]
    lines += [f"- {name}: {delay:.1f} s" for name, delay in delays.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
