"""Test data of the alerts tests: breaches and a clock the tests move by hand."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import Breach, BreachKind, BreachSource, BreachState, Severity

T0 = datetime(2026, 11, 22, 2, 0, tzinfo=UTC)


def make_breach(
    n: int,
    *,
    app_id: str = "chat-bot",
    severity: Severity = Severity.WARNING,
    kind: BreachKind = BreachKind.LATENCY,
    state: BreachState = BreachState.OPENED,
) -> Breach:
    return Breach(
        breach_id=f"breach-{n:05d}",
        state=state,
        severity=severity,
        kind=kind,
        source=BreachSource.HOT,
        app_id=app_id,
        signal="latency_ms",
        detector="slo_burn_rate",
        observed=1234.5,
        baseline=400.0,
        threshold=800.0,
        window_start=T0,
        window_end=T0,
        opened_at=T0,
        resolved_at=T0 if state is BreachState.RESOLVED else None,
        sample_trace_ids=[f"trace-{n}"],
    )


class FakeClock:
    """Wall clock the tests move by hand, so lock expiry needs no waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
