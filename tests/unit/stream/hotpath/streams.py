"""Seeded test streams: plain values for detectors, stored documents for the engine."""

from __future__ import annotations

import hashlib
import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.document import TelemetryDocument

# Aligned to 1800 s, so every default burn-rate bucket starts on an event.
T0 = 1_699_999_200.0


def normal(seed: int, count: int, mean: float = 0.0, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(mean, sd) for _ in range(count)]


def shifted(seed: int, before: int, after: int, shift: float, sd: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0.0, sd) for _ in range(before)] + [
        rng.gauss(shift, sd) for _ in range(after)
    ]


def document(
    i: int,
    *,
    app_id: str = "app-a",
    seconds: float | None = None,
    latency_ms: float | None = 300.0,
    error: bool = False,
    output_chars: int = 800,
    tokens: bool = True,
    scores: dict[str, float] | None = None,
) -> TelemetryDocument:
    """Document ``i`` of a stream (one per second unless ``seconds`` says otherwise)."""
    when = datetime.fromtimestamp(T0, UTC) + timedelta(seconds=i if seconds is None else seconds)
    data: dict[str, Any] = {
        "id": f"{app_id}-doc-{i}",
        "pk": f"{app_id}:{when.date().isoformat()}",
        "schema_version": 1,
        "app_id": app_id,
        "timestamp": when,
        "trace_id": f"{app_id}-trace-{i}",
        "latency_ms": latency_ms,
        "status": "error" if error else "ok",
        "tokens": {"input": 100, "output": output_chars // 4} if tokens else None,
        "scores": scores or {},
        "metadata": {},
        "app": {},
        "derived": {"output_chars": output_chars, "tokens_total": 100 + output_chars // 4},
        "ingest": {
            "source": "test",
            "partition": "0",
            "sequence": i,
            "enqueued_time": when,
            "processed_at": when,
            "lag_ms": 0.0,
        },
    }
    return TelemetryDocument.model_validate(data)


def seasonal(seed: int, count: int, amplitude: float, period: int = 20_000) -> list[float]:
    """N(0, 1) plus ``amplitude``·sin with a random phase: stable, with a slow seasonal swing
    (bench/detectors.py's "stable seasonal" streams)."""
    rng = random.Random(seed)
    phase = rng.uniform(0.0, 2.0 * math.pi)
    return [
        rng.gauss(0.0, 1.0) + amplitude * math.sin(2.0 * math.pi * i / period + phase)
        for i in range(count)
    ]


def autoregressive(
    seed: int, count: int, rho: float, shift_at: int | None = None, shift: float = 0.0
) -> list[float]:
    """AR(1) with unit marginal deviation (x = ρ·previous + innovation), plus ``shift`` from
    ``shift_at`` on: latency that drifts slowly with load."""
    rng = random.Random(seed)
    spread = math.sqrt(1.0 - rho * rho)
    x = rng.gauss(0.0, 1.0)
    out = []
    for i in range(count):
        out.append(x + (shift if shift_at is not None and i >= shift_at else 0.0))
        x = rho * x + rng.gauss(0.0, spread)
    return out


def trace_id(i: int, app_id: str = "") -> str:
    """A W3C-shaped trace id (32 hex digits), deterministic."""
    return hashlib.blake2b(f"{app_id}/{i}".encode(), digest_size=16).hexdigest()
