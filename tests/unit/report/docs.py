"""Builders of the documents and breaches the report tests feed in."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Breach, TelemetryDocument, Tokens
from schemas.breach import BreachKind, BreachSource, BreachState, Severity
from schemas.document import DerivedSizes, IngestInfo

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def doc(
    app_id: str,
    timestamp: datetime,
    *,
    latency_ms: float | None = 100.0,
    error: bool = False,
    tokens: tuple[int, int] | None = None,
    model_id: str | None = None,
    scores: dict[str, float] | None = None,
    number: int = 0,
) -> TelemetryDocument:
    return TelemetryDocument(
        id=f"{app_id}-{timestamp.timestamp():.6f}-{number}",
        pk=f"{app_id}:{timestamp.date().isoformat()}",
        schema_version=1,
        app_id=app_id,
        timestamp=timestamp,
        trace_id=f"t{number}",
        model_id=model_id,
        latency_ms=latency_ms,
        status="error" if error else "ok",
        tokens=Tokens(input=tokens[0], output=tokens[1]) if tokens else None,
        scores=scores or {},
        metadata={},
        app={},
        derived=DerivedSizes(),
        ingest=IngestInfo(
            source="test",
            partition="0",
            sequence=number,
            enqueued_time=timestamp,
            processed_at=timestamp,
            lag_ms=0.0,
        ),
    )


def breach(
    app_id: str,
    opened_at: datetime,
    resolved_at: datetime | None = None,
    *,
    breach_id: str = "b1",
    severity: Severity = Severity.WARNING,
    message: str = "",
) -> Breach:
    return Breach(
        breach_id=breach_id,
        state=BreachState.RESOLVED if resolved_at else BreachState.OPENED,
        severity=severity,
        kind=BreachKind.LATENCY,
        source=BreachSource.HOT,
        app_id=app_id,
        signal="latency_ms",
        detector="burn_rate",
        observed=3000.0,
        threshold=2000.0,
        window_start=opened_at,
        window_end=opened_at,
        opened_at=opened_at,
        resolved_at=resolved_at,
        message=message,
    )
