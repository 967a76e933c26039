"""Processor statistics count an incident once, whatever its messages."""

from __future__ import annotations

from datetime import UTC, datetime

from schemas import BreachState, Severity
from stream.ports import ReceivedEvent
from stream.stats import ProcessorStats
from tests.unit.alerts.factories import make_breach

LAST = ReceivedEvent(body=b"{}", partition="0", sequence=1, enqueued_time=datetime.now(UTC))


def open_gauge(stats: ProcessorStats, severity: str) -> float | None:
    return stats.metrics.registry.get_sample_value(
        "evalstream_open_breaches", {"severity": severity}
    )


def test_an_escalated_incident_is_one_open_breach_of_its_new_severity() -> None:
    stats = ProcessorStats()
    opened = make_breach(1)
    stats.record("0", LAST, 1, [], [opened])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (1.0, 0.0)
    escalated = opened.model_copy(
        update={"state": BreachState.ESCALATED, "severity": Severity.CRITICAL}
    )
    stats.record("0", LAST, 1, [], [escalated])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (0.0, 1.0)
    resolved = escalated.model_copy(update={"state": BreachState.RESOLVED})
    stats.record("0", LAST, 1, [], [resolved])
    assert (open_gauge(stats, "warning"), open_gauge(stats, "critical")) == (0.0, 0.0)
    assert (stats.breaches_opened, stats.breaches_resolved) == (1, 1)
