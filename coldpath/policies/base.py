"""What a metric is: a versioned value object computed from one window's documents, page by page.

The shard runner resolves each metric of a policy from the catalogue by name, builds one
``Accumulator`` per (app, window), feeds it the window's documents a page at a time (and, for
metrics with ``needs_reference``, the reference window's documents first through
``add_reference``), then calls ``finish`` once. Accumulators hold bounded state (counts, sums,
fixed-size sketches or reservoirs), never the documents themselves, so a window of any size
is evaluated in bounded memory. A metric never raises for bad or missing data in documents:
missing optional fields are counted as absent; a metric that cannot run at all returns an
outcome with ``status="unavailable"`` and a reason. ``value_names`` says, from the parameters
alone, which value names an outcome can hold, so a threshold on any other name is refused
when the settings load instead of never being judged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

from schemas import AppConfig, TelemetryDocument

OutcomeStatus = Literal["ok", "insufficient_data", "unavailable"]

PLACEHOLDER_START, PLACEHOLDER_END = "<", ">"


@dataclass(frozen=True)
class ValueNames:
    """The value names a metric can report with given parameters.

    ``exact`` names are fixed (``"p95"``); a ``pattern`` holds one ``<placeholder>`` that stands
    for a name taken from the data (``"<score>.mean"``: the mean of any score name). ``hint``
    says how to make more names available (``"list error types in params.types"``).
    """

    exact: tuple[str, ...]
    patterns: tuple[str, ...] = ()
    hint: str = ""

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name in self.exact or any(_matches(pattern, name) for pattern in self.patterns)

    def describe(self) -> str:
        listed = ", ".join([*self.exact, *self.patterns]) or "none"
        return f"{listed}; {self.hint}" if self.hint else listed


def _matches(pattern: str, name: str) -> bool:
    prefix, _, rest = pattern.partition(PLACEHOLDER_START)
    suffix = rest.partition(PLACEHOLDER_END)[2]
    return (
        len(name) > len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix)
    )


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

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        """Every value name an outcome can hold with these (valid) parameters; thresholds on
        other names are refused at start."""
        ...

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        """A fresh accumulator for one (app, window); ``app`` is the app's resolved config
        (e.g. its latency SLO threshold)."""
        ...
