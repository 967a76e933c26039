"""The configurations bench/processor.py compares, each run in a child process of its own.

Run: ``python -m bench.processor_subjects KIND EVENTS_FILE`` (the driver does this); prints
one JSON line ``{"events", "cpu_s", "wall_s"}``. Every kind is timed the same way: the bodies
are loaded and the stores created first (set-up, not timed), then the clock runs from just
before the first event is handled until the last one is durably written (the processor's
source start-up and checkpoints included, as in the floor's commits). CPU is the whole
process's (every thread).

Kinds:
- ``orjson``: ``orjson.loads`` of every body (DESIGN.md's reference);
- ``floor``: a hand-written loop doing the processor's essential work: pydantic
  ``TelemetryEvent`` validation, a blake2b id, ``pk``, and a SQLite ``executemany`` upsert
  per 1,000 events (WAL, synchronous=NORMAL, like the store), no detectors;
- ``floor-river``: the floor plus river's ADWIN and PageHinkley on latency per app;
- ``evalstream``, ``evalstream-hot``: the real processor on the embedded backend (log, pipeline,
  SQLite store), hot path off and on.
The Bytewax peer runs in its own environment: bench/processor_peer.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from common.sqlite import sqlite3

BATCH = 1000


# The measurement conditions (20 apps, 4 partitions), kept when the embedded default
# became 8: in one process the count does not change the CPU per event (paired runs of
# 2026-12-06, 3 each: 71.8 against 71.9 µs per event, hot path on).
PARTITIONS = 4


def upsert_table(path: Path) -> sqlite3.Connection:
    """The floor's store: one table of (pk, id, JSON), WAL and synchronous=NORMAL as the
    embedded store has."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(
        "CREATE TABLE docs (pk TEXT NOT NULL, id TEXT NOT NULL, body BLOB NOT NULL, "
        "PRIMARY KEY (pk, id))"
    )
    return connection


def upsert(connection: sqlite3.Connection, rows: list[tuple[str, str, bytes]]) -> None:
    connection.execute("BEGIN")
    connection.executemany(
        "INSERT INTO docs VALUES (?, ?, ?) ON CONFLICT (pk, id) DO UPDATE SET body = excluded.body",
        rows,
    )
    connection.execute("COMMIT")


def floor(bodies: list[bytes], folder: Path, detectors: bool) -> tuple[float, float]:
    from river.drift import ADWIN, PageHinkley

    from schemas.telemetry import TelemetryEvent

    validate = TelemetryEvent.__pydantic_validator__.validate_json
    connection = upsert_table(folder / "floor.db")
    per_app: dict[str, tuple[ADWIN, PageHinkley]] = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for offset in range(0, len(bodies), BATCH):
        rows = []
        for body in bodies[offset : offset + BATCH]:
            event = validate(body)
            pk = f"{event.app_id}:{event.timestamp.date().isoformat()}"
            rows.append((pk, hashlib.blake2b(body, digest_size=16).hexdigest(), body))
            if detectors and event.latency_ms is not None:
                pair = per_app.get(event.app_id)
                if pair is None:
                    pair = per_app[event.app_id] = (ADWIN(), PageHinkley())
                pair[0].update(event.latency_ms)
                pair[1].update(event.latency_ms)
        upsert(connection, rows)
    connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
    result = time.perf_counter() - wall, time.process_time() - cpu
    connection.close()
    return result


def evalstream(bodies: list[bytes], folder: Path, hot_path: bool) -> tuple[float, float]:
    from evalstream import wiring
    from evalstream.settings import load_settings
    from stream.processor import Processor
    from stream.sources.local_log import LocalLog
    from stream.stats import ProcessorStats

    base = load_settings()
    settings = base.model_copy(
        update={
            "embedded": base.embedded.model_copy(
                update={"data_dir": folder, "partitions": PARTITIONS}
            ),
            "processor": base.processor.model_copy(update={"hot_path": hot_path}),
        }
    )
    log = LocalLog(settings.embedded.log_path, settings.embedded.partitions)
    app_ids = [orjson.loads(body)["app_id"] for body in bodies]
    log.append(list(zip(app_ids, bodies, strict=True)))
    log.close()

    async def run() -> tuple[float, float]:
        stats = ProcessorStats()
        stop = asyncio.Event()
        async with wiring.store(settings) as store, wiring.publisher(settings) as publisher:
            pipeline = wiring.pipeline(settings, store, stats, publisher)
            processor = Processor(wiring.source(settings), pipeline, stats, 3600, lambda _: None)

            async def stop_when_done() -> None:
                while stats.events < len(bodies):
                    await asyncio.sleep(0.01)
                stop.set()

            wall, cpu = time.perf_counter(), time.process_time()
            async with asyncio.TaskGroup() as group:
                group.create_task(stop_when_done())
                group.create_task(processor.run(stop))
            return time.perf_counter() - wall, time.process_time() - cpu

    return asyncio.run(run())


def loads(bodies: list[bytes], folder: Path) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    for body in bodies:
        orjson.loads(body)
    return time.perf_counter() - wall, time.process_time() - cpu


KINDS: dict[str, Callable[[list[bytes], Path], tuple[float, float]]] = {
    "orjson": loads,
    "floor": lambda bodies, folder: floor(bodies, folder, detectors=False),
    "floor-river": lambda bodies, folder: floor(bodies, folder, detectors=True),
    "evalstream": lambda bodies, folder: evalstream(bodies, folder, hot_path=False),
    "evalstream-hot": lambda bodies, folder: evalstream(bodies, folder, hot_path=True),
}


def main() -> None:
    kind, events_file = sys.argv[1], Path(sys.argv[2])
    bodies = events_file.read_bytes().splitlines()
    with tempfile.TemporaryDirectory(prefix="bench-subject-") as folder:
        wall, cpu = KINDS[kind](bodies, Path(folder))
    print(orjson.dumps({"events": len(bodies), "cpu_s": cpu, "wall_s": wall}).decode())


if __name__ == "__main__":
    main()
