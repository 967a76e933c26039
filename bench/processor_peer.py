"""The peer of bench/processor.py: a Bytewax dataflow doing the processor's work.

Run by the driver with the peer's own interpreter (a virtual environment the bench makes with
Bytewax 0.21.1, river, pydantic and orjson; this repository on its path for the event model):
``python bench/processor_peer.py EVENTS_FILE``. The dataflow validates each body as a
pydantic ``TelemetryEvent``, gives it its blake2b id and ``pk``, keys it by app, runs river's
ADWIN and PageHinkley on latency per app (``stateful_map``) and writes the documents to SQLite
through a sink that upserts each batch, as the floor does. Timed like every other
configuration (bench/processor_subjects.py): set-up first, then from the first event until
the last is written; prints one JSON line ``{"events", "cpu_s", "wall_s"}``.
"""

from __future__ import annotations

import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSource, run_main
from river.drift import ADWIN, PageHinkley

from bench.processor_subjects import BATCH, upsert, upsert_table
from schemas.telemetry import TelemetryEvent

validate = TelemetryEvent.__pydantic_validator__.validate_json


class SqlitePartition(StatelessSinkPartition[tuple[str, str, bytes]]):
    def __init__(self, path: Path) -> None:
        self.connection = upsert_table(path)

    def write_batch(self, items: list[tuple[str, str, bytes]]) -> None:
        upsert(self.connection, items)

    def close(self) -> None:
        self.connection.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self.connection.close()


class SqliteSink(DynamicSink[tuple[str, str, bytes]]):
    def __init__(self, path: Path) -> None:
        self.path = path

    def build(self, step_id: str, worker_index: int, worker_count: int) -> SqlitePartition:
        return SqlitePartition(self.path)


def document(body: bytes) -> tuple[str, tuple[str, str, bytes, float | None]]:
    event = validate(body)
    pk = f"{event.app_id}:{event.timestamp.date().isoformat()}"
    row = (pk, hashlib.blake2b(body, digest_size=16).hexdigest(), body, event.latency_ms)
    return event.app_id, row


def detect(
    state: tuple[ADWIN, PageHinkley] | None, row: tuple[str, str, bytes, float | None]
) -> tuple[tuple[ADWIN, PageHinkley], tuple[str, str, bytes]]:
    if state is None:
        state = (ADWIN(), PageHinkley())
    latency = row[3]
    if latency is not None:
        state[0].update(latency)
        state[1].update(latency)
    return state, row[:3]


def flow(bodies: list[bytes], path: Path) -> Dataflow:
    dataflow = Dataflow("evalstream-peer")
    events = op.input("bodies", dataflow, TestingSource(bodies, batch_size=BATCH))
    keyed = op.map("validate", events, document)
    detected = op.stateful_map("detect", keyed, detect)
    rows: Any = op.map("unkey", detected, lambda pair: pair[1])
    op.output("sqlite", rows, SqliteSink(path))
    return dataflow


def main() -> None:
    bodies = Path(sys.argv[1]).read_bytes().splitlines()
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as folder:
        dataflow = flow(bodies, Path(folder) / "peer.db")
        wall, cpu = time.perf_counter(), time.process_time()
        run_main(dataflow)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(orjson.dumps({"events": len(bodies), "cpu_s": cpu, "wall_s": wall}).decode())


if __name__ == "__main__":
    main()
