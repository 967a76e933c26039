"""Ingest metrics of several worker processes summed into one registry (``SummedWorkers``)."""

from __future__ import annotations

import orjson
from prometheus_client import CollectorRegistry

from stream.metrics import FamilyRow, IngestMetrics, SummedWorkers, snapshot


def _worker(accepted: int, rejected: int, seconds: float) -> list[FamilyRow]:
    registry = CollectorRegistry()
    metrics = IngestMetrics(registry)
    metrics.requests.labels("202").inc(accepted)
    metrics.requests.labels("422").inc(rejected)
    metrics.seconds.observe(seconds)
    # As it crosses the pipe: plain JSON-able values.
    rows: list[FamilyRow] = orjson.loads(orjson.dumps(snapshot(registry)))
    return rows


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_workers_are_summed_and_a_retired_worker_still_counts() -> None:
    summed = SummedWorkers()
    registry = CollectorRegistry()
    registry.register(summed)
    summed.update(0, _worker(3, 1, 0.02))
    summed.update(1, _worker(5, 0, 0.2))
    assert _value(registry, "evalstream_ingest_requests_total", status="202") == 8
    assert _value(registry, "evalstream_ingest_requests_total", status="422") == 1
    assert _value(registry, "evalstream_ingest_request_duration_seconds_count") == 2
    assert _value(registry, "evalstream_ingest_request_duration_seconds_bucket", le="0.025") == 1
    assert _value(registry, "evalstream_ingest_request_duration_seconds_created") is None

    # Worker 1 dies; its replacement starts from zero: the sums do not go down.
    summed.retire(1)
    summed.update(1, _worker(2, 0, 0.01))
    assert _value(registry, "evalstream_ingest_requests_total", status="202") == 10
    assert _value(registry, "evalstream_ingest_request_duration_seconds_count") == 3
    # A later snapshot of a live worker replaces its earlier one (they are cumulative).
    summed.update(0, _worker(4, 1, 0.02))
    assert _value(registry, "evalstream_ingest_requests_total", status="202") == 11
