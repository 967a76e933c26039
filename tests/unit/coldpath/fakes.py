"""Test doubles of the cold path: small exact metrics, a document builder, a recording bus.

The metrics here are deliberately trivial (numpy over all values) so tests can state exact
expectations; the real catalogue is tested on its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import numpy as np

from coldpath.policies.base import Accumulator, Metric, MetricOutcome, ValueNames
from schemas import AppConfig, Breach, TelemetryDocument
from schemas.document import DerivedSizes, IngestInfo


def doc(
    app_id: str,
    timestamp: datetime,
    *,
    latency_ms: float | None = 100.0,
    error: bool = False,
    number: int = 0,
    late: bool = False,
) -> TelemetryDocument:
    """A stored document; ``latency_ms=None`` leaves the optional field out."""
    moment = timestamp.astimezone(UTC)
    return TelemetryDocument(
        id=f"{app_id}-{moment.timestamp():.6f}-{number}",
        pk=f"{app_id}:{moment.date().isoformat()}",
        schema_version=1,
        app_id=app_id,
        timestamp=moment,
        trace_id=f"t{number}",
        latency_ms=latency_ms,
        status="error" if error else "ok",
        error_type="timeout" if error else None,
        scores={},
        metadata={},
        app={},
        derived=DerivedSizes(),
        ingest=IngestInfo(
            source="test",
            partition="0",
            sequence=number,
            enqueued_time=moment,
            processed_at=moment,
            lag_ms=0.0,
            late=late,
        ),
    )


class _Latency:
    def __init__(self) -> None:
        self.values: list[float] = []

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        self.values.extend(d.latency_ms for d in documents if d.latency_ms is not None)

    def finish(self) -> MetricOutcome:
        if not self.values:
            return MetricOutcome(values={"p95": None, "mean": None}, sample_size=0)
        array = np.asarray(self.values)
        return MetricOutcome(
            values={"p95": float(np.percentile(array, 95)), "mean": float(array.mean())},
            sample_size=len(self.values),
        )


class LatencyMetric:
    name: ClassVar[str] = "latency"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        if set(params) - {"scale"}:
            raise ValueError(f"unknown parameters {sorted(set(params) - {'scale'})}")

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return ValueNames(("p95", "mean"))

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return _Latency()


class _Errors:
    def __init__(self) -> None:
        self.count = 0
        self.errors = 0

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        self.count += len(documents)
        self.errors += sum(d.status == "error" for d in documents)

    def finish(self) -> MetricOutcome:
        rate = self.errors / self.count if self.count else None
        return MetricOutcome(values={"rate": rate}, sample_size=self.count)


class ErrorsMetric:
    name: ClassVar[str] = "errors"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        pass

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return ValueNames(("rate",))

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return _Errors()


class _Shift:
    def __init__(self) -> None:
        self.reference: list[float] = []
        self.current: list[float] = []

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        self.reference.extend(d.latency_ms for d in documents if d.latency_ms is not None)

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        self.current.extend(d.latency_ms for d in documents if d.latency_ms is not None)

    def finish(self) -> MetricOutcome:
        if not self.reference or not self.current:
            return MetricOutcome(
                values={"shift": None},
                sample_size=len(self.current),
                status="insufficient_data",
                reason="no reference window",
            )
        shift = float(np.mean(self.current) - np.mean(self.reference))
        return MetricOutcome(values={"shift": shift}, sample_size=len(self.current))


class MeanShiftMetric:
    name: ClassVar[str] = "shift"
    version: ClassVar[int] = 2
    needs_reference: ClassVar[bool] = True

    def validate_params(self, params: Mapping[str, Any]) -> None:
        pass

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return ValueNames(("shift",))

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return _Shift()


CATALOGUE: dict[str, Metric] = {
    metric.name: metric for metric in (LatencyMetric(), ErrorsMetric(), MeanShiftMetric())
}


class OutdatedLatencyMetric:
    """A custom metric written before the Metric protocol had ``value_names``."""

    name: ClassVar[str] = "latency"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        LatencyMetric().validate_params(params)

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return _Latency()


# A custom catalogue of that age (``coldpath.catalogue = "...fakes:OUTDATED_CATALOGUE"``).
OUTDATED_CATALOGUE: dict[str, object] = {
    "latency": OutdatedLatencyMetric(),
    "errors": ErrorsMetric(),
}


class RecordingPublisher:
    """An AlertPublisher that keeps what it was given, deduplicated by message id like a bus."""

    def __init__(self) -> None:
        self.published: dict[str, Breach] = {}
        self.calls = 0

    async def __aenter__(self) -> RecordingPublisher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass

    async def publish(self, breaches: Sequence[Breach]) -> None:
        self.calls += 1
        for breach in breaches:
            self.published.setdefault(breach.message_id, breach)
