"""Builders of the documents and breaches the report tests feed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from report import ReportData, ReportRequest
from report.data import Incident
from report.series import SeriesAccumulator
from schemas import (
    Breach,
    EvaluationResult,
    SloConfig,
    TelemetryDocument,
    Thresholds,
    Tokens,
    Window,
)
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


# Producers' text that plotly.js or a browser would read as markup: a link, bold, a line
# break, quotes and entities (shown as typed, "&amp;" too, not as "&").
LINK = '<a href="https://evil.example/phish">click</a>'
HOSTILE = (LINK, "<b>bold</b>", "q\"'&amp;", "&lt;i&gt; &#60;sub&#62; &nbsp;", "one<br>two")
HOSTILE_APP = "<b>app</b>\"'&amp;"


def hostile_report() -> ReportData:
    """Every chart and table of the report, each string in it one of ``HOSTILE``: score names,
    the app id, an incident's fields, an evaluation's policy, metric, value name and reason."""
    slo = SloConfig(latency_threshold_ms=500.0, error_budget=0.01, latency_budget=0.05)
    accumulator = SeriesAccumulator(HOSTILE_APP, slo, max_buckets=10)
    accumulator.add(
        [
            doc(
                HOSTILE_APP,
                T0 + timedelta(seconds=n),
                tokens=(10, 2),
                error=n == 0,
                scores={name: n / 10 for name in HOSTILE},
                number=n,
            )
            for n in range(10)
        ]
    )
    incident = Incident(
        breach_id="b1",
        app_id=HOSTILE_APP,
        kind=HOSTILE[0],
        severity="critical",
        source=HOSTILE[1],
        signal=HOSTILE[2],
        detector=HOSTILE[3],
        opened_at=T0,
        resolved_at=None,
        observed=3.0,
        threshold=2.0,
        message=HOSTILE[4],
    )
    evaluation = EvaluationResult(
        id="r1",
        pk="r1",
        app_id=HOSTILE_APP,
        policy=HOSTILE[0],
        policy_version=1,
        metric=HOSTILE[1],
        metric_version=1,
        window=Window(start=T0, end=T0 + timedelta(minutes=1)),
        values={HOSTILE[2]: 0.5},
        sample_size=10,
        status="warning",
        reason=HOSTILE[3],
        thresholds={HOSTILE[2]: Thresholds.model_validate({"warning": {"max": 0.1}})},
        manifest_id="m",
        computed_at=T0,
    )
    return ReportData(
        request=ReportRequest(T0, T0 + timedelta(hours=1), app_ids=(HOSTILE_APP,)),
        generated_at=T0 + timedelta(hours=1),
        apps=[accumulator.finish()],
        incidents=[incident],
        evaluations=[evaluation],
        notes=[HOSTILE[0]],
    )
