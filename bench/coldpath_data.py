"""Stored windows for the cold-path benchmarks: many realistic telemetry rows, written fast.

A pool of documents comes from the real simulator, decoder and enricher (the processor's own
path: ~2 KB JSON with prompt and answer texts, scores, metadata and tokens). Window rows are
copies of pool documents with their own id, trace id, event time (spread evenly over the
window) and a jittered latency, serialised with orjson and bulk-inserted into a file the
``SqliteStore`` created: the same table, columns and values its ``write`` stores, at a
fraction of the cost of building a pydantic model per row. ``check_readable`` reads a page
back through the store, so a row the store could not read fails the benchmark up front.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from coldpath.config import QUALITY_POLICY
from common.sqlite import sqlite3
from evalstream.settings import Settings, load_settings
from schemas import AppDirectory, EvaluationPolicy, Window
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.producers.simulator import Simulator

WINDOW = Window(
    start=datetime(2026, 1, 5, 10, tzinfo=UTC), end=datetime(2026, 1, 5, 11, tzinfo=UTC)
)
REFERENCE = Window(start=WINDOW.start - timedelta(hours=1), end=WINDOW.start)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Currency per 1,000 tokens for every model the simulator reports.
PRICES = {
    "gpt-4o": {"input_per_1k": 0.0025, "output_per_1k": 0.01},
    "gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006},
    "phi-3-mini": {"input_per_1k": 0.00013, "output_per_1k": 0.00052},
    "phi-3-medium": {"input_per_1k": 0.00017, "output_per_1k": 0.00068},
    "llama-3.1-8b": {"input_per_1k": 0.0003, "output_per_1k": 0.00061},
    "mistral-large": {"input_per_1k": 0.002, "output_per_1k": 0.006},
}
_INSERT = "INSERT INTO telemetry (id, pk, app_id, ts, doc) VALUES (?, ?, ?, ?, ?)"
_BATCH = 20_000


def bench_policy(name: str = "quality") -> EvaluationPolicy:
    """The default ``quality`` policy (latency, errors, usage, scores, drift against the
    previous window) with a price table, so usage computes costs too."""
    metrics = tuple(
        spec.model_copy(update={"params": {"prices": PRICES}}) if spec.metric == "usage" else spec
        for spec in QUALITY_POLICY.metrics
    )
    return QUALITY_POLICY.model_copy(update={"name": name, "metrics": metrics})


def document_pool(size: int, seed: int) -> list[dict[str, Any]]:
    """``size`` stored documents (as JSON objects) from the simulator, decoder and enricher;
    four simulated apps, so several models, error types and score sets are mixed."""
    now = WINDOW.end + timedelta(hours=1)
    simulator = Simulator(apps=4, rate=200.0, seed=seed, start=REFERENCE.start)
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"bench", "local")
    position = ReceivedEvent(b"", "0", 0, now, "0")
    pool = []
    for event in simulator.events(size):
        for accepted in decoder.decode(event.body, now).accepted:
            document = enricher.document(accepted.event, position, 0, now, False)
            pool.append(orjson.loads(document.json_bytes()))
    return pool


@dataclass(frozen=True)
class Rows:
    """What one ``fill`` wrote."""

    documents: int
    bytes: int


_VARIABLE = ("id", "pk", "app_id", "timestamp", "trace_id", "latency_ms", "ingest")


def _templates(pool: list[dict[str, Any]]) -> list[tuple[bytes, float | None, dict[str, Any]]]:
    """Each pool document as (JSON of its fixed fields without the closing brace, latency,
    ingest): rows splice their own values in front, so a row costs one join, not a dump."""
    templates = []
    for doc in pool:
        fixed = orjson.dumps({k: v for k, v in doc.items() if k not in _VARIABLE})
        templates.append((fixed[1:], doc["latency_ms"], doc["ingest"]))
    return templates


def _rows(
    pool: list[dict[str, Any]], app_id: str, window: Window, count: int, seed: int
) -> Iterator[tuple[str, str, str, float, bytes]]:
    rng = np.random.default_rng(seed)
    templates = _templates(pool)
    picks = rng.integers(0, len(templates), count).tolist()
    jitter = rng.lognormal(0.0, 0.15, count).tolist()
    trace = rng.integers(0, 2**63, (count, 2)).tolist()
    start_us = (window.start - EPOCH) // timedelta(microseconds=1)
    span_us = (window.end - window.start) // timedelta(microseconds=1)
    day = window.start.replace(hour=0, minute=0, second=0, microsecond=0)
    day_us = (day - EPOCH) // timedelta(microseconds=1)
    date = day.date().isoformat()
    pk = f"{app_id}:{date}"
    head = orjson.dumps({"pk": pk, "app_id": app_id})[1:-1]
    for i in range(count):
        fixed, latency, ingest = templates[picks[i]]
        moment_us = start_us + (span_us * i) // count
        seconds, micros = divmod(moment_us - day_us, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        text = f"{date}T{hour:02d}:{minute:02d}:{second:02d}.{micros:06d}Z"
        high, low = trace[i]
        doc_id = f"{high:016x}{low:016x}"
        variable = {
            "id": doc_id,
            "timestamp": text,
            "trace_id": f"{low:016x}{high:016x}",
            "latency_ms": None if latency is None else round(latency * jitter[i], 1),
            "ingest": {**ingest, "sequence": i, "enqueued_time": text, "processed_at": text},
        }
        body = b"".join((orjson.dumps(variable)[:-1], b",", head, b",", fixed))
        yield doc_id, pk, app_id, moment_us / 1e6, body


def fill(
    path: Path, pool: list[dict[str, Any]], app_id: str, window: Window, count: int, seed: int
) -> Rows:
    """Insert ``count`` documents of ``app_id`` spread over ``window`` into the store file at
    ``path`` (created by ``SqliteStore`` if new), in transactions of 20,000 rows."""
    asyncio.run(SqliteStore(path).close())  # creates the file with the store's schema
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA synchronous=OFF")  # generation, not part of any figure
    written = 0
    batch: list[tuple[str, str, str, float, bytes]] = []
    try:
        for row in _rows(pool, app_id, window, count, seed):
            batch.append(row)
            written += len(row[4])
            if len(batch) == _BATCH:
                _insert(connection, batch)
                batch = []
        if batch:
            _insert(connection, batch)
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    return Rows(count, written)


def _insert(
    connection: sqlite3.Connection, batch: list[tuple[str, str, str, float, bytes]]
) -> None:
    connection.execute("BEGIN")
    connection.executemany(_INSERT, batch)
    connection.execute("COMMIT")


async def _first_page(path: Path, app_id: str, window: Window) -> int:
    async with SqliteStore(path) as store:
        async for page in store.telemetry_window([app_id], window.start, window.end, 100):
            return len(page)
    return 0


def check_readable(path: Path, app_id: str, window: Window) -> None:
    """Read (and validate) the first page of the window through the store."""
    if asyncio.run(_first_page(path, app_id, window)) == 0:
        raise RuntimeError(f"no document of {app_id} readable in {window.key}")


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return (
            "{ "
            + ", ".join(f"{orjson.dumps(k).decode()} = {_toml(v)}" for k, v in value.items())
            + " }"
        )
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    return repr(value)


def write_config(path: Path, policies: list[EvaluationPolicy], *, group_size: int = 25) -> Path:
    """A TOML config holding ``policies`` (what shard processes load with ``--config``)."""
    lines = ["[coldpath]", f"group_size = {group_size}", ""]
    for policy in policies:
        lines.append("[[coldpath.policies]]")
        for key, value in policy.model_dump(mode="json", exclude_none=True).items():
            lines.append(f"{key} = {_toml(value)}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def settings_for(data_dir: Path, config: Path, page_size: int | None = None) -> Settings:
    """The settings a shard process would build from ``config`` and ``--data-dir``."""
    settings = load_settings(config=config)
    embedded = settings.embedded.model_copy(update={"data_dir": data_dir})
    update: dict[str, Any] = {"embedded": embedded}
    if page_size is not None:
        update["coldpath"] = settings.coldpath.model_copy(update={"page_size": page_size})
    return settings.model_copy(update=update)
