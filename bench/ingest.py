"""HTTP ingest while the processor runs: everything in one process (as before issue 15) against
ingest in worker processes of its own beside the processing workers, on this machine's cores.

Run: ``python -m bench.ingest [--seconds S] [--repeats R] [--workers 1,2]``. Each run starts
``evalstream process --ingest --ingest-workers K`` (default settings: hot path on, 8 partitions;
``--workers 1 --ingest-workers 0`` for "before", the default one processing worker per core
otherwise) on a fresh data dir; ``--clients`` closed-loop HTTP/1.1 keep-alive connections then
post ``--batch``-event bodies of simulated ~1.2 KB events (each event once) for ``--seconds``.
The clients are raw asyncio streams writing pre-built requests, so they cost the machine little
and the same in every configuration. Measured per run: events answered 202 per second, request
latency (p50, p99), events the processor processed per second in the same window, its backlog
(its lag gauge summed over partitions, from ``/metrics`` once a second), how long it needs to
catch up after the clients stop, and the CPU per accepted event of the command's process, of
its processing workers and of its ingest workers. Configurations alternate within each repeat
(order rotated); results are medians, written to bench/results/ingest.md.

Three loads: back to back; back to back with ingest pushing back past ``--max-backlog`` events
waiting for the processor (``ingest.max_backlog``: posts are paced to the processor's rate; one
that cannot go within ``ingest.backlog_hold_s`` is answered 503 with Retry-After, and the client
waits that long and sends the same request again, as a producer should); paced at
``--paced`` × the before configuration's back-to-back rate. Latencies are those of the requests
answered 202; refused requests are counted apart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

from common.sqlite import sqlite3
from evalstream.settings import DEFAULT_PARTITIONS
from stream.producers.ingest_config import IngestSettings
from stream.producers.simulator import Simulator

RESULTS = Path(__file__).parent / "results" / "ingest.md"
TICKS = os.sysconf("SC_CLK_TCK")
# Each /metrics read is answered by an ingest worker, which gathers every worker's figures: at
# 4 Hz that took 15 % of an ingest worker's CPU (a profile of the 13:02 run of 2026-12-04), a
# load that Prometheus, scraping every 15-60 s, never puts on it.
BACKLOG_EVERY_S = 1.0
CATCH_UP_LIMIT_S = 120.0


def make_requests(events: int, batch: int) -> list[bytes]:
    """Pre-built POST requests of ``batch`` simulated events each."""
    simulator = Simulator(
        apps=20, rate=5000.0, seed=42, start=datetime.now(UTC) - timedelta(minutes=10)
    )
    bodies = [event.body for event in simulator.events(events)]
    requests = []
    for start in range(0, len(bodies) - batch + 1, batch):
        body = b'{"events":[' + b",".join(bodies[start : start + batch]) + b"]}"
        head = (
            b"POST /api/telemetry HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)
        )
        requests.append(head + body)
    return requests


@dataclass
class Run:
    accepted: int = 0
    errors: int = 0
    refused: int = 0
    latencies: list[float] = field(default_factory=list)
    window_s: float = 0.0
    processed: int = 0
    backlog: list[int] = field(default_factory=list)
    catch_up_s: float = 0.0
    processor_cpu_s: float = 0.0
    processing_cpu_s: float = 0.0
    workers_cpu_s: float = 0.0
    exhausted: bool = False

    @property
    def rate(self) -> float:
        return self.accepted / self.window_s

    @property
    def processed_rate(self) -> float:
        return self.processed / self.window_s

    def latency(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bytes]:
    """(status, headers by lower-case name, body) of one HTTP/1.1 answer."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, await reader.readexactly(int(headers.get(b"content-length", 0)))


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % path.encode())
        status, _, body = await _read_answer(reader)
        return status, body
    finally:
        writer.close()


async def _progress(port: int) -> tuple[float, float]:
    """(events processed, events waiting in the log) as the processor's /metrics tell."""
    _, text = await _get(port, "/metrics")
    processed = backlog = 0.0
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "evalstream_events_total":
                processed += sample.value
            elif sample.name == "evalstream_partition_lag_events":
                backlog += sample.value
    return processed, backlog


async def _client(
    port: int,
    requests: Iterator[bytes],
    deadline: float,
    run: Run,
    interval_s: float | None,
    first_s: float,
) -> None:
    """Post until ``deadline``: back to back, or paced (one request every ``interval_s`` from
    ``first_s``; a late client sends at once and does not make up for lost slots)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    next_at = first_s
    try:
        while time.monotonic() < deadline:
            if interval_s is not None:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval_s, time.monotonic())
            request = next(requests, None)
            if request is None:
                run.exhausted = True
                return
            while True:
                started = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status, headers, answer = await _read_answer(reader)
                if status != 503 or orjson.loads(answer).get("error") != "backlog":
                    break
                # Pushed back: wait as told, then the same request again.
                run.refused += 1
                await asyncio.sleep(float(headers[b"retry-after"]))
                if time.monotonic() >= deadline:
                    return
            if status == 202:
                run.latencies.append(time.perf_counter() - started)
                run.accepted += request.count(b'"app_id"')
            else:
                run.errors += 1
    finally:
        writer.close()


async def _sample_backlog(port: int, stop: asyncio.Event, run: Run) -> None:
    while not stop.is_set():
        run.backlog.append(int((await _progress(port))[1]))
        try:
            async with asyncio.timeout(BACKLOG_EVERY_S):
                await stop.wait()
        except TimeoutError:
            pass


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _children(pid: int) -> tuple[list[int], list[int]]:
    """The command's processing workers and its ingest workers, by their module."""
    processing, ingest = [], []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        command = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        (ingest if b"evalstream.ingest_worker" in command else processing).append(int(child))
    return processing, ingest


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


async def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"processor exited: {process.stdout.read().decode()}")  # type: ignore[union-attr]
        try:
            if (await _get(port, "/healthz"))[0] == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("the processor did not answer in time")


async def one_run(
    workers: int,
    requests: list[bytes],
    seconds: float,
    clients: int,
    scratch: Path,
    rate: float | None,
    max_backlog: int | None = None,
) -> Run:
    data_dir = Path(tempfile.mkdtemp(dir=scratch))
    port = _free_port()
    # Before issue 15 everything ran in the command's one process; after it, processing runs
    # in worker processes (one per core, the default) beside the ingest workers.
    processing_workers = "1" if workers == 0 else str(os.cpu_count() or 1)
    command = [
        sys.executable, "-m", "evalstream", "process", "--data-dir", str(data_dir),
        "--ingest", "--ingest-port", str(port), "--ingest-workers", str(workers),
        "--workers", processing_workers, "--log-level", "WARNING",
    ]  # fmt: skip
    # Without --max-backlog, a bound the run cannot reach: ingest never pushes back.
    env = {**os.environ, "EVALSTREAM_INGEST__MAX_BACKLOG": str(max_backlog or 10**9)}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    run = Run()
    try:
        await _wait_ready(port, process)
        processing, pids = _children(process.pid)
        feed = iter(requests)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample_backlog(port, stop, run))
        cpu_before = (
            _cpu_s(process.pid),
            sum(_cpu_s(pid) for pid in processing),
            sum(_cpu_s(pid) for pid in pids),
        )
        done_before, _ = await _progress(port)
        started = time.monotonic()
        batch = requests[0].count(b'"app_id"')
        interval = clients * batch / rate if rate else None
        async with asyncio.TaskGroup() as group:
            for n in range(clients):
                first = started + (interval or 0.0) * n / clients
                group.create_task(_client(port, feed, started + seconds, run, interval, first))
        run.window_s = time.monotonic() - started
        done_after, _ = await _progress(port)
        run.processor_cpu_s = _cpu_s(process.pid) - cpu_before[0]
        run.processing_cpu_s = sum(_cpu_s(pid) for pid in processing) - cpu_before[1]
        run.workers_cpu_s = sum(_cpu_s(pid) for pid in pids) - cpu_before[2]
        run.processed = int(done_after - done_before)
        stop.set()
        await sampler
        caught_up = time.monotonic()
        while time.monotonic() - caught_up < CATCH_UP_LIMIT_S:
            if (await _progress(port))[0] >= run.accepted:
                break
            await asyncio.sleep(0.1)
        run.catch_up_s = time.monotonic() - caught_up
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=120)
    return run


def reference(requests: list[bytes]) -> float:
    """CPU µs per event of ``orjson.loads`` over the first requests' bodies (best of 3)."""
    bodies = [request.split(b"\r\n\r\n", 1)[1] for request in requests[:100]]
    events = sum(body.count(b'"app_id"') for body in bodies)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for body in bodies:
            orjson.loads(body)
        best = min(best, time.process_time() - started)
    return best / events * 1e6


def _name(workers: int) -> str:
    if workers == 0:
        return "ingest and processing in one process (before)"
    return f"{workers} ingest worker process{'es' if workers > 1 else ''}"


# Issue 15's target for ingest beside the processor: this many times the one-process
# configuration's events/s, p99 request latency at most this, and the processor keeping up,
# read as processing at least this share of what ingest accepted over the same window.
TARGET_RATIO = 2.0
TARGET_P99_MS = 100.0
KEEPING_UP = 0.95


@dataclass
class Phase:
    """Every configuration ``repeats`` times, interleaved, at one load (``rate``: paced)."""

    rate: float | None
    runs: dict[int, list[Run]]
    max_backlog: int | None = None
    loads: list[str] = field(default_factory=list)
    orjson_us: list[float] = field(default_factory=list)


def run_phase(
    args: argparse.Namespace,
    configs: list[int],
    requests: list[bytes],
    rate: float | None,
    scratch: Path,
    max_backlog: int | None = None,
) -> Phase:
    phase = Phase(rate, {n: [] for n in configs}, max_backlog)
    for repeat in range(args.repeats):
        order = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
        phase.loads.append(" ".join(f"{value:.2f}" for value in os.getloadavg()))
        for workers in order:
            phase.orjson_us.append(reference(requests))
            run = asyncio.run(
                one_run(workers, requests, args.seconds, args.clients, scratch, rate, max_backlog)
            )
            phase.runs[workers].append(run)
            print(
                f"{'paced ' if rate else 'pushing back ' if max_backlog else ''}"
                f"repeat {repeat + 1} {_name(workers)}: "
                f"{run.rate:,.0f} events/s, p99 {run.latency(0.99):.1f} ms, processed "
                f"{run.processed_rate:,.0f}/s, backlog at end {run.backlog[-1]:,}, catch-up "
                f"{run.catch_up_s:.1f} s, refused {run.refused}"
                + (" (ran out of events)" if run.exhausted else ""),
                flush=True,
            )
    return phase


def table(phase: Phase, args: argparse.Namespace) -> list[str]:
    before = statistics.median(run.rate for run in phase.runs[0])
    load = (
        f"paced to {phase.rate:,.0f} events/s in all ({args.paced:g} × the before "
        "configuration's median in the back-to-back runs)"
        if phase.rate
        else "posting back to back (each sends its next request when answered)"
        + (
            f", ingest pushing back past {phase.max_backlog:,} events waiting (posts paced to "
            "the processor's rate; one that cannot go within "
            f"{IngestSettings().backlog_hold_s:g} s is answered 503 + Retry-After, and the "
            "client waits and sends the same request again)"
            if phase.max_backlog
            else ", ingest never pushing back"
        )
    )
    lines = [
        f"Load: {args.clients} keep-alive HTTP/1.1 clients {load}, {args.batch} events per "
        f"request, {args.seconds:g} s per run. Load average (1/5/15 min) before each repeat: "
        f"{'; '.join(phase.loads)}. `orjson.loads` of the same events, measured before each "
        f"run: {statistics.median(phase.orjson_us):.2f} µs/event CPU (the machine's speed).",
        "",
        "| configuration | HTTP events/s | × before | p50 ms | p99 ms | processed events/s "
        "| backlog at end | backlog max | catch-up s | command's process CPU µs/event "
        "| processing workers CPU µs/event | ingest workers CPU µs/event "
        "| requests refused (503) | runs (HTTP events/s) |",
        "| --- " * 14 + "|",
    ]

    def med(values: Iterator[float]) -> float:
        return statistics.median(values)

    for workers, done in phase.runs.items():
        rate = med(run.rate for run in done)
        lines.append(
            f"| {_name(workers)} | {rate:,.0f} | {rate / before:.2f} "
            f"| {med(run.latency(0.5) for run in done):.1f} "
            f"| {med(run.latency(0.99) for run in done):.1f} "
            f"| {med(run.processed_rate for run in done):,.0f} "
            f"| {med(run.backlog[-1] if run.backlog else 0 for run in done):,.0f} "
            f"| {med(max(run.backlog, default=0) for run in done):,.0f} "
            f"| {med(run.catch_up_s for run in done):.1f} "
            f"| {med(run.processor_cpu_s / max(run.accepted, 1) * 1e6 for run in done):.1f} "
            f"| {med(run.processing_cpu_s / max(run.accepted, 1) * 1e6 for run in done):.1f} "
            f"| {med(run.workers_cpu_s / max(run.accepted, 1) * 1e6 for run in done):.1f} "
            f"| {med(run.refused for run in done):,.0f} "
            f"| {', '.join(f'{run.rate:,.0f}' for run in done)} |"
        )
    errors = sum(run.errors for done in phase.runs.values() for run in done)
    exhausted = sum(run.exhausted for done in phase.runs.values() for run in done)
    return [
        *lines,
        "",
        f"Answers other than 202: {errors}; runs that ran out of prepared events: {exhausted}.",
        "",
        *verdicts(phase, before),
    ]


def verdicts(phase: Phase, before: float) -> list[str]:
    """Issue 15's target, judged per configuration from the medians above."""
    lines = [
        f"Target (issue 15): HTTP events/s ≥ {TARGET_RATIO:g}× before with p99 ≤ "
        f"{TARGET_P99_MS:g} ms, the processor keeping up (processed events/s ≥ "
        f"{KEEPING_UP:.0%} of the HTTP events/s, so the backlog does not keep growing):",
        "",
    ]
    for workers, done in phase.runs.items():
        if workers == 0:
            continue
        rate = statistics.median(run.rate for run in done)
        p99 = statistics.median(run.latency(0.99) for run in done)
        processed = statistics.median(run.processed_rate for run in done)
        met = rate >= TARGET_RATIO * before and p99 <= TARGET_P99_MS
        met = met and processed >= KEEPING_UP * rate
        lines.append(
            f"- {_name(workers)}: {rate / before:.2f}× before, p99 {p99:.1f} ms, processed "
            f"{processed / rate:.0%} of the HTTP events/s — "
            + ("**met**" if met else "**not met**")
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--workers", default="1,2", help="Worker counts to compare with 0.")
    parser.add_argument("--events", type=int, default=500_000, help="Simulated events made.")
    parser.add_argument(
        "--paced",
        type=float,
        default=2.0,
        help="Then pace every configuration at this multiple of the before configuration's "
        "back-to-back events/s (0: skip).",
    )
    parser.add_argument(
        "--max-backlog",
        type=int,
        default=60_000,
        help="Then post back to back again with ingest pushing back past this many events "
        "waiting for the processor (0: skip).",
    )
    parser.add_argument("--no-write", action="store_true", help="Do not update the results file.")
    parser.add_argument("--results", type=Path, default=RESULTS, help="Results file to write.")
    args = parser.parse_args()
    configs = [0, *(int(n) for n in args.workers.split(","))]
    print(f"making {args.events:,} simulated events ...", flush=True)
    requests = make_requests(args.events, args.batch)
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        phases = [run_phase(args, configs, requests, None, Path(tmp))]
        pushing = None
        if args.max_backlog:
            pushing = run_phase(args, configs, requests, None, Path(tmp), args.max_backlog)
        if args.paced:
            before = statistics.median(run.rate for run in phases[0].runs[0])
            phases.append(run_phase(args, configs, requests, args.paced * before, Path(tmp)))
    lines = [
        "# HTTP ingest beside the processor",
        "",
        f"Command: `python -m bench.ingest --seconds {args.seconds:g} --repeats {args.repeats} "
        f"--clients {args.clients} --batch {args.batch} --workers {args.workers} "
        f"--paced {args.paced:g} --max-backlog {args.max_backlog}"
        + ("" if args.results == RESULTS else f" --results {args.results}")
        + "`",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, shared with "
        f"other work. Processor with default settings (hot path on, {DEFAULT_PARTITIONS} "
        "partitions), a fresh data dir per run; simulated ~1.2 KB events, each posted once per "
        "run; medians of "
        f"{args.repeats} interleaved repeats.",
        "",
        "## Back to back",
        "",
        *table(phases[0], args),
    ]
    if pushing is not None:
        lines += [
            "",
            f"## Back to back, ingest pushing back past {args.max_backlog:,} events waiting",
            "",
            *table(pushing, args),
        ]
    if len(phases) > 1:
        lines += ["", f"## Paced at {args.paced:g} × before", "", *table(phases[1], args)]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)


if __name__ == "__main__":
    main()
