"""Stored windows for the cold-path benchmarks: simulator documents bulk-inserted into the
embedded store, the built-in-metrics policy that evaluates them, and a publisher that drops
breaches.

Documents start as the processor would store them (simulator bodies through the real decoder
and enricher, ~1.7 KB of JSON each). A pool of those is then replayed with its own id,
timestamp and a jittered latency per row and inserted as the rows ``SqliteStore.write``
writes (same table, same columns, same JSON), which is ~20× faster than the write path and
stays out of every measurement.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from coldpath.shards import build_manifest
from schemas import AppDirectory, Breach, EvaluationPolicy, JobManifest, Window
from store.sqlite import SqliteStore
from store.sqlite_connection import connect
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.producers.simulator import Simulator

START = datetime(2026, 3, 2, 1, tzinfo=UTC)  # the evaluated window; the reference is before
WINDOW = Window(start=START, end=START + timedelta(hours=1))
REFERENCE = Window(start=START - timedelta(hours=1), end=START)
POOL_SIZE = 20_000
INSERT_CHUNK = 50_000
# USD per 1,000 tokens for the simulator's models (any table does: the cost is what is timed).
PRICES = {
    "phi-3-mini": {"input_per_1k": 0.00013, "output_per_1k": 0.00052},
    "phi-3-medium": {"input_per_1k": 0.00017, "output_per_1k": 0.00068},
}
SCORE_BAR = 0.5
SLO_MS = 2000.0  # the default app's latency SLO (schemas.appconfig), used by the pandas script

POLICY_SPEC: dict[str, Any] = {
    "name": "bench",
    "window": "PT1H",
    "lateness": "PT0S",
    "min_sample_size": 20,
    "metrics": [
        {"metric": "latency", "thresholds": {"p95": {"warning": {"max": 5000.0}}}},
        {"metric": "errors", "thresholds": {"rate": {"warning": {"max": 0.2}}}},
        {"metric": "usage", "params": {"prices": PRICES}},
        {"metric": "scores", "params": {"bar": SCORE_BAR}},
        {
            "metric": "drift",
            "params": {"numeric": ["latency_ms"], "categorical": ["model_version"]},
            "thresholds": {"psi.latency_ms": {"warning": {"max": 10.0}}},
        },
    ],
}
POLICY = EvaluationPolicy.model_validate(POLICY_SPEC)


def policy_toml() -> str:
    """The same policy as a settings file, for ``evalstream coldpath run-shard``."""
    prices = ", ".join(
        f'"{model}" = {{ input_per_1k = {price["input_per_1k"]}, '
        f"output_per_1k = {price['output_per_1k']} }}"
        for model, price in PRICES.items()
    )
    return f"""
[coldpath]
group_size = 5
shard_retries = 0

[[coldpath.policies]]
name = "bench"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 20
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = {{ p95 = {{ warning = {{ max = 5000.0 }} }} }}
[[coldpath.policies.metrics]]
metric = "errors"
thresholds = {{ rate = {{ warning = {{ max = 0.2 }} }} }}
[[coldpath.policies.metrics]]
metric = "usage"
params = {{ prices = {{ {prices} }} }}
[[coldpath.policies.metrics]]
metric = "scores"
params = {{ bar = {SCORE_BAR} }}
[[coldpath.policies.metrics]]
metric = "drift"
params = {{ numeric = ["latency_ms"], categorical = ["model_version"] }}
thresholds = {{ "psi.latency_ms" = {{ warning = {{ max = 10.0 }} }} }}
"""


def app_ids(apps: int) -> list[str]:
    return [f"app-{index:03d}" for index in range(apps)]


def manifest(apps: int, group_size: int, run: int = 0) -> JobManifest:
    return build_manifest(
        WINDOW, [POLICY], app_ids(apps), group_size=group_size, code_version="bench", run=run
    )


class NullPublisher:
    """An AlertPublisher that keeps nothing: the bus is not what these benchmarks time."""

    async def __aenter__(self) -> NullPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    async def publish(self, breaches: Sequence[Breach]) -> None:
        pass


def document_pool(size: int = POOL_SIZE, seed: int = 42) -> list[dict[str, Any]]:
    """``size`` simulated documents of one app, as the processor stores them, as JSON dicts."""
    now = datetime.now(UTC)
    simulator = Simulator(apps=1, rate=200.0, seed=seed, start=now - timedelta(hours=2))
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"k", "local")
    position = ReceivedEvent(b"", "0", 0, now, "0")
    pool = []
    for event in simulator.events(size):
        for accepted in decoder.decode(event.body, now).accepted:
            document = enricher.document(accepted.event, position, 0, now, False)
            pool.append(orjson.loads(document.json_bytes()))
    return pool


def window_rows(
    pool: list[dict[str, Any]],
    app_id: str,
    window: Window,
    count: int,
    rng: np.random.Generator,
    latency_scale: float,
    first: int = 0,
) -> list[tuple[str, str, str, float, bytes]]:
    """``count`` rows of ``app_id`` spread over ``window``, in the store's column layout;
    ``first`` numbers them (ids are unique per app, window and number)."""
    span = (window.end - window.start).total_seconds()
    offsets = np.sort(rng.random(count)) * span
    base = window.start.timestamp()
    stamps = base + offsets
    micros = np.round(stamps * 1e6).astype("datetime64[us]")
    texts = np.datetime_as_string(micros, unit="us").tolist()
    factors = (rng.lognormal(0.0, 0.15, count) * latency_scale).tolist()
    picks = rng.integers(0, len(pool), count).tolist()
    pk = f"{app_id}:{window.start.date().isoformat()}"
    rows = []
    for k in range(count):
        document = dict(pool[picks[k]])
        key = f"{app_id}/{window.start.timestamp():.0f}/{first + k}".encode()
        document_id = hashlib.blake2b(key, digest_size=16).hexdigest()
        document["id"] = document_id
        document["app_id"] = app_id
        document["pk"] = pk
        document["timestamp"] = texts[k] + "Z"
        latency = document.get("latency_ms")
        if latency is not None:
            document["latency_ms"] = round(latency * factors[k], 1)
        rows.append((document_id, pk, app_id, float(stamps[k]), orjson.dumps(document)))
    return rows


@dataclass(frozen=True)
class StoreShape:
    apps: int
    current: int  # documents per app in WINDOW
    reference: int  # documents per app in REFERENCE

    @property
    def documents(self) -> int:
        return self.apps * (self.current + self.reference)


def build_store(path: Path, shape: StoreShape, seed: int = 7) -> None:
    """A fresh SQLite store holding ``shape``; the current window's latencies run 5 % slower
    than the reference's, so drift has something to find."""
    path.unlink(missing_ok=True)
    asyncio.run(SqliteStore(path).close())  # the store's own schema and pragmas
    pool = document_pool(POOL_SIZE)
    rng = np.random.default_rng(seed)
    connection = connect(path)
    try:
        insert = "INSERT INTO telemetry (id, pk, app_id, ts, doc) VALUES (?, ?, ?, ?, ?)"
        for app_id in app_ids(shape.apps):
            for window, count, scale in (
                (REFERENCE, shape.reference, 1.0),
                (WINDOW, shape.current, 1.05),
            ):
                for first in range(0, count, INSERT_CHUNK):
                    size = min(INSERT_CHUNK, count - first)
                    rows = window_rows(pool, app_id, window, size, rng, scale, first)
                    connection.execute("BEGIN")
                    connection.executemany(insert, rows)
                    connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


def _shape_file(path: Path) -> Path:
    return path.with_name(path.name + ".shape")


def ensure_store(path: Path, shape: StoreShape) -> bool:
    """Build the store unless ``path`` was built with this ``shape`` already (a data file kept
    from an earlier run: ``--data`` of the benchmarks); True when it was built."""
    marker = _shape_file(path)
    wanted = orjson.dumps(asdict(shape))
    if path.exists() and marker.exists() and marker.read_bytes() == wanted:
        return False
    marker.unlink(missing_ok=True)
    build_store(path, shape)
    marker.write_bytes(wanted)
    return True
