"""Documents and a feeding loop for the metric tests; expected values are computed in the tests
themselves from the raw inputs, never through the code under test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from coldpath.policies.base import Metric, MetricOutcome
from schemas import AppConfig, TelemetryDocument
from schemas.document import DerivedSizes, IngestInfo
from schemas.telemetry import MetadataValue, Tokens

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_doc(
    number: int,
    *,
    latency_ms: float | None = None,
    error_type: str | None = None,
    error: bool = False,
    tokens: tuple[int, int] | None = None,
    model_id: str | None = None,
    model_version: str | None = None,
    scores: Mapping[str, float] | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    output_text: str | None = None,
) -> TelemetryDocument:
    moment = START + timedelta(milliseconds=number)
    return TelemetryDocument(
        id=f"doc-{number}",
        pk=f"app-1:{moment.date().isoformat()}",
        schema_version=1,
        app_id="app-1",
        timestamp=moment,
        trace_id=f"trace-{number}",
        model_id=model_id,
        model_version=model_version,
        output_text=output_text,
        latency_ms=latency_ms,
        status="error" if error or error_type else "ok",
        error_type=error_type,
        tokens=Tokens(input=tokens[0], output=tokens[1]) if tokens else None,
        scores=dict(scores or {}),
        metadata=dict(metadata or {}),
        app={},
        derived=DerivedSizes(
            output_chars=len(output_text) if output_text else 0,
            tokens_total=sum(tokens) if tokens else 0,
        ),
        ingest=IngestInfo(
            source="test",
            partition="0",
            sequence=number,
            enqueued_time=moment,
            processed_at=moment,
            lag_ms=0.0,
        ),
    )


def pages_of(documents: Sequence[TelemetryDocument], size: int) -> list[list[TelemetryDocument]]:
    return [list(documents[i : i + size]) for i in range(0, len(documents), size)]


def evaluate(
    metric: Metric,
    pages: Sequence[Sequence[TelemetryDocument]],
    params: Mapping[str, Any] | None = None,
    *,
    reference: Sequence[Sequence[TelemetryDocument]] = (),
    app: AppConfig | None = None,
) -> MetricOutcome:
    """What the runner does: reference pages first, then the window's pages, then finish."""
    accumulator = metric.accumulator(params or {}, app or AppConfig())
    for page in reference:
        accumulator.add_reference(list(page))
    for page in pages:
        accumulator.add(list(page))
    return accumulator.finish()
