"""Breach: the alert that the hot and cold paths publish when a signal leaves its bounds.

On the hot path a breach is an incident of one (app, signal): the first detector that fires
opens it (and names it: ``breach_id`` and ``detector``), every other detector that fires while
it is open adds its ``evidence``, and subscribers get one message when it opens, one when a
more severe detector escalates it, and one when it resolves (every detector quiet).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

MAX_SAMPLE_TRACE_IDS = 10


class BreachState(StrEnum):
    OPENED = "opened"
    # A detector of a higher severity joined an open incident: same breach id, the new
    # severity, kind and figures (subscribers filtering on severity see it from here on).
    ESCALATED = "escalated"
    RESOLVED = "resolved"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class BreachKind(StrEnum):
    DRIFT = "drift"
    LATENCY = "latency"
    ERROR_RATE = "error_rate"
    EVALUATION = "evaluation"


class BreachSource(StrEnum):
    HOT = "hot"
    COLD = "cold"


def breach_id_for(app_id: str, signal: str, detector: str, opened_by: str) -> str:
    """Deterministic breach id.

    ``opened_by`` identifies the event (its document id) or the event-time window where the
    breach opened, never a transport position, so the same stream yields the same ids on
    every backend and on replay.
    """
    material = "\x1f".join((app_id, signal, detector, opened_by)).encode()
    return hashlib.blake2b(material, digest_size=16).hexdigest()


SEVERITY_RANK = {Severity.WARNING: 0, Severity.CRITICAL: 1}


class Evidence(BaseModel):
    """One detector's finding within an incident: what it saw and when (event time)."""

    model_config = ConfigDict(frozen=True)

    detector: str
    kind: BreachKind
    severity: Severity
    observed: float
    baseline: float | None = None
    threshold: float | None = None
    at: datetime
    message: str = ""


class Breach(BaseModel):
    model_config = ConfigDict(frozen=True)

    breach_id: str
    state: BreachState
    severity: Severity
    kind: BreachKind
    source: BreachSource
    app_id: str
    signal: str
    detector: str
    observed: float
    baseline: float | None = None
    threshold: float | None = None
    window_start: datetime
    window_end: datetime
    opened_at: datetime
    resolved_at: datetime | None = None
    sample_trace_ids: list[str] = Field(default_factory=list, max_length=MAX_SAMPLE_TRACE_IDS)
    message: str = ""
    # The detectors that agree, in the order they fired (the opener first); hot path only.
    evidence: list[Evidence] = Field(default_factory=list)

    @property
    def detectors(self) -> list[str]:
        """Names of the detectors that agree (just ``detector`` without evidence)."""
        return [e.detector for e in self.evidence] or [self.detector]

    @property
    def message_id(self) -> str:
        """Bus message id: one per breach and state, so duplicates are detected."""
        return f"{self.breach_id}:{self.state}"

    @property
    def routing_properties(self) -> dict[str, str]:
        """Application properties that subscriptions filter on."""
        return {
            "app_id": self.app_id,
            "severity": self.severity.value,
            "kind": self.kind.value,
            "state": self.state.value,
        }
