"""Processor benchmark on the embedded backend: end-to-end events/s against orjson.loads.

Run: ``python -m bench.processor [--events N] [--repeats R] [--hot-path]``. Each repeat
processes the same simulated ~1.2 KB events from a fresh data dir through the real source,
pipeline and SQLite store, in this process; the reference (``orjson.loads`` of the same bytes)
and the component costs are measured in the same run. Results: medians, written to
bench/results/processor.md.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from evalstream import wiring
from evalstream.settings import Settings, load_settings
from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.processor import Processor
from stream.producers.simulator import Simulator
from stream.sources.local_log import LocalLog
from stream.stats import ProcessorStats

RESULTS = Path(__file__).parent / "results" / "processor.md"


def make_bodies(count: int) -> list[tuple[str | None, bytes]]:
    simulator = Simulator(
        apps=20, rate=200.0, seed=42, start=datetime.now(UTC) - timedelta(hours=2)
    )
    return [(event.app_id, event.body) for event in simulator.events(count)]


def settings_for(data_dir: Path, hot_path: bool) -> Settings:
    base = load_settings()
    return base.model_copy(
        update={
            "embedded": base.embedded.model_copy(update={"data_dir": data_dir}),
            "processor": base.processor.model_copy(update={"hot_path": hot_path}),
        }
    )


async def end_to_end(bodies: list[tuple[str | None, bytes]], hot_path: bool) -> tuple[float, float]:
    """Seconds (wall, CPU) from start until every event is processed and checkpointed."""
    with tempfile.TemporaryDirectory() as folder:
        settings = settings_for(Path(folder), hot_path)
        log = LocalLog(settings.embedded.log_path, settings.embedded.partitions)
        log.append(bodies)
        log.close()
        stats = ProcessorStats()
        stop = asyncio.Event()
        async with wiring.store(settings) as store, wiring.publisher(settings) as publisher:
            pipeline = wiring.pipeline(settings, store, stats, publisher)
            processor = Processor(wiring.source(settings), pipeline, stats, 3600, lambda _: None)

            async def stop_when_done() -> None:
                while stats.events < len(bodies):
                    await asyncio.sleep(0.001)
                stop.set()

            wall, cpu = time.perf_counter(), time.process_time()
            async with asyncio.TaskGroup() as group:
                group.create_task(stop_when_done())
                group.create_task(processor.run(stop))
            return time.perf_counter() - wall, time.process_time() - cpu


def per_event(seconds: list[float], count: int) -> float:
    return statistics.median(seconds) / count * 1e6


def components(bodies: list[bytes], repeats: int) -> dict[str, float]:
    """Median CPU µs per event of each pipeline stage, measured alone."""
    now = datetime.now(UTC)
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"k", "local")
    position = ReceivedEvent(b"", "0", 0, now, "0")
    events = [accepted.event for body in bodies for accepted in decoder.decode(body, now).accepted]
    documents = [enricher.document(event, position, 0, now, False) for event in events]
    timings: dict[str, list[float]] = {"decode+validate": [], "enrich": [], "store upsert": []}

    async def store_all(store: SqliteStore) -> None:
        for offset in range(0, len(documents), 1000):
            await store.write(documents[offset : offset + 1000], [])
        await store.close()

    for _ in range(repeats):
        start = time.process_time()
        for body in bodies:
            decoder.decode(body, now)
        timings["decode+validate"].append(time.process_time() - start)
        start = time.process_time()
        for event in events:
            enricher.document(event, position, 0, now, False)
        timings["enrich"].append(time.process_time() - start)
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "store.db")
            # Closing checkpoints the WAL into the file: part of what the writes cost.
            start = time.process_time()
            asyncio.run(store_all(store))
            timings["store upsert"].append(time.process_time() - start)
    return {name: per_event(values, len(bodies)) for name, values in timings.items()}


def reference(bodies: list[bytes], repeats: int) -> float:
    """Median CPU µs per event of ``orjson.loads`` (CPU time, like the pipeline's figure:
    wall time would charge other processes on the shared machine to the reference)."""
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        for body in bodies:
            orjson.loads(body)
        seconds.append(time.process_time() - start)
    return per_event(seconds, len(bodies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hot-path", action="store_true", help="Also run with detectors on.")
    parser.add_argument("--no-write", action="store_true", help="Do not update the results file.")
    args = parser.parse_args()

    pairs = make_bodies(args.events)
    bodies = [body for _, body in pairs]
    size = statistics.mean(len(body) for body in bodies)
    modes = [False, True] if args.hot_path else [False]
    rows = []
    orjson_us: list[float] = []
    for hot in modes:
        walls, cpus = [], []
        for _ in range(args.repeats):
            # Reference measured next to each repeat so both see the same machine load.
            orjson_us.append(reference(bodies, 3))
            wall, cpu = asyncio.run(end_to_end(pairs, hot))
            walls.append(wall)
            cpus.append(cpu)
        rows.append((hot, per_event(walls, len(bodies)), per_event(cpus, len(bodies))))
    ref = statistics.median(orjson_us)
    parts = components(bodies[:20_000], args.repeats)

    lines = [
        "# Processor benchmark (embedded backend)",
        "",
        f"Command: `python -m bench.processor --events {args.events} --repeats {args.repeats}"
        + (" --hot-path`" if args.hot_path else "`"),
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}, shared 2-core box "
        f"(noisy: medians of {args.repeats}).",
        f"Events: {args.events:,} simulated, mean {size:,.0f} bytes, 20 apps, 4 partitions.",
        "",
        f"Reference `orjson.loads` of the same bytes: {ref:.2f} µs/event CPU "
        f"({1e6 / ref:,.0f} events/s).",
        "",
        "| mode | wall µs/event | events/s (wall) | CPU µs/event | events/s per core | × orjson |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for hot, wall_us, cpu_us in rows:
        lines.append(
            f"| {'detectors on' if hot else 'store only'} | {wall_us:.1f} | {1e6 / wall_us:,.0f} "
            f"| {cpu_us:.1f} | {1e6 / cpu_us:,.0f} | {cpu_us / ref:.1f} |"
        )
    lines += ["", "Where the time goes (each stage alone, median CPU µs/event):", ""]
    lines += [
        f"- {name}: {value:.2f} µs ({value / ref:.1f} × orjson)" for name, value in parts.items()
    ]
    rest = rows[0][2] - sum(parts.values())
    lines.append(
        f"- rest of store-only mode (log read, batch loop, checkpoints; end to end minus the "
        f"stages above): {rest:.2f} µs ({rest / ref:.1f} × orjson)"
    )
    if len(rows) == 2:
        detectors = rows[1][2] - rows[0][2]
        lines.append(
            f"- hot path (detectors on minus store only): {detectors:.2f} µs "
            f"({detectors / ref:.1f} × orjson)"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
