"""What a metric is: a versioned value object computed from one window's documents, page by page.

The shard runner resolves each metric of a policy from the catalogue by name, builds one
``Accumulator`` per (app, window), feeds it the window's documents a page at a time (and, for
metrics with ``needs_reference``, the reference window's documents first through
``add_reference``), then calls ``finish`` once. Accumulators hold bounded state (counts, sums,
fixed-size sketches or reservoirs), never the documents themselves, so a window of any size
is evaluated in bounded memory. A metric never raises for bad or missing data in documents:
missing optional fields are counted as absent; a metric that cannot run at all returns an
outcome with ``status="unavailable"`` and a reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from schemas import AppConfig, TelemetryDocument

OutcomeStatus = Literal["ok", "insufficient_data", "unavailable"]


@dataclass(frozen=True)
class MetricOutcome:
    """What a metric found in one window.

    ``values`` maps value names (``"p95"``, ``"rate"``, ``"rate.timeout"``, ``"psi"``...) to
    numbers (None when undefined, e.g. a percentile of zero samples). ``sample_size`` is the
    number of documents that carried the metric's input. Threshold comparison and the
    ``warning``/``critical`` statuses are the runner's job, not the metric's.
    """

    values: Mapping[str, float | None]
    sample_size: int
    status: OutcomeStatus = "ok"
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


class Accumulator(Protocol):
    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        """One page of the reference window (drift metrics); others ignore it."""
        ...

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        """One page of the evaluated window, in time order."""
        ...

    def finish(self) -> MetricOutcome:
        """The outcome; called once, after the last page."""
        ...


class Metric(Protocol):
    """A metric of the catalogue. ``name`` and ``version`` enter the result id: change the
    version whenever the computed values would change for the same documents."""

    name: ClassVar[str]
    version: ClassVar[int]
    needs_reference: ClassVar[bool]

    def validate_params(self, params: Mapping[str, Any]) -> None:
        """Raise ValueError naming the parameter when ``params`` are wrong (checked at start)."""
        ...

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        """A fresh accumulator for one (app, window); ``app`` is the app's resolved config
        (e.g. its latency SLO threshold)."""
        ...
