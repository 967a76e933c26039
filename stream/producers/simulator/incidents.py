"""Scripted anomalies: an incident shifts one app's latency, a score or its error rate for a span
of event time; parsed from and printed as ``kind:app_id[/score]@start+duration x magnitude``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

IncidentKind = Literal["latency_regression", "score_drift", "error_burst"]
INCIDENT_KINDS: Final[tuple[str, ...]] = get_args(IncidentKind)

_NUMBER = r"[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
_INCIDENT_RE: Final = re.compile(
    rf"^(?P<kind>[a-z_]+):(?P<app>[A-Za-z0-9._:-]{{1,128}})(?:/(?P<score>[A-Za-z0-9._-]+))?"
    rf"@(?P<start>{_NUMBER})\+(?P<duration>{_NUMBER})x(?P<magnitude>-?{_NUMBER})$"
)


@dataclass(frozen=True)
class Incident:
    """A scripted anomaly on one app during a span of event time.

    ``magnitude`` is the latency factor (latency_regression), the shift of a score in units
    of that score's σ (score_drift; the app's first score unless ``score`` names one), or
    the error rate during the burst (error_burst).
    """

    kind: IncidentKind
    app_id: str
    start_s: float
    duration_s: float
    magnitude: float
    score: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {self.kind!r}; expected one of {INCIDENT_KINDS}"
            )
        values = (self.start_s, self.duration_s, self.magnitude)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("incident start, duration and magnitude must be finite")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("incident start must be >= 0 and duration > 0 seconds")
        if self.kind == "latency_regression" and self.magnitude <= 0:
            raise ValueError("latency_regression magnitude is a factor and must be > 0")
        if self.kind == "error_burst" and not 0 <= self.magnitude <= 1:
            raise ValueError("error_burst magnitude is an error rate in [0, 1]")
        if self.score is not None and self.kind != "score_drift":
            raise ValueError("only score_drift incidents name a score")

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s

    @classmethod
    def parse(cls, text: str) -> Incident:
        """Parse ``kind:app_id[/score]@start+duration x magnitude`` (seconds, no spaces).

        Examples: ``latency_regression:app-002@120+300x3``,
        ``score_drift:app-001/relevance@60+120x-2``, ``error_burst:app-000@0+30x0.2``.
        """
        match = _INCIDENT_RE.match(text.strip())
        if match is None:
            raise ValueError(
                f"cannot parse incident {text!r}: expected"
                " kind:app_id[/score]@start+durationxmagnitude,"
                " e.g. latency_regression:app-002@120+300x3"
            )
        kind = match["kind"]
        if kind not in INCIDENT_KINDS:
            raise ValueError(
                f"unknown incident kind {kind!r} in {text!r}; expected one of {INCIDENT_KINDS}"
            )
        try:
            return cls(
                kind=cast(IncidentKind, kind),
                app_id=match["app"],
                start_s=float(match["start"]),
                duration_s=float(match["duration"]),
                magnitude=float(match["magnitude"]),
                score=match["score"],
            )
        except ValueError as exc:
            raise ValueError(f"invalid incident {text!r}: {exc}") from exc

    def __str__(self) -> str:
        # The inverse of parse(), so a CLI can echo the incidents it was given.
        score = f"/{self.score}" if self.score else ""
        span = f"{_number(self.start_s)}+{_number(self.duration_s)}x{_number(self.magnitude)}"
        return f"{self.kind}:{self.app_id}{score}@{span}"


def _number(value: float) -> str:
    short = f"{value:g}"
    return short if float(short) == value else repr(value)
