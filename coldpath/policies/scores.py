"""Summaries of the scores that guardrails attached to requests: per score name, its mean,
p10, p50 and the share below a bar."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.columns import columns, present
from coldpath.policies.sketch import EXACT_CAP, Sample
from schemas import AppConfig, TelemetryDocument

DEFAULT_BAR = 0.5
# Score names tracked per window (a document carries at most 64); later names are listed in
# details as untracked rather than growing the state without bound.
MAX_SCORE_NAMES = 64
PERCENTILES = {"p10": 0.1, "p50": 0.5}
STATISTICS = ("count", "mean", *PERCENTILES, "below")


class ScoresMetric:
    """``scores`` v1 — per score name ``<name>.count``, ``<name>.mean``, ``<name>.p10``,
    ``<name>.p50`` and ``<name>.below`` (share of that score's values strictly below its bar).

    Parameters: ``bar`` (default 0.5) and ``bars`` (``{name: bar}``, per-name overrides);
    ``names`` restricts the summary to those scores (each is then reported, with None values
    when absent from the window). A document without a given score is simply not counted for
    it. Percentiles: linear interpolation, exact up to 100,000 values of a score per window,
    then within 0.5 % relative (``coldpath.policies.sketch``); ``mean`` and ``below`` are exact.
    ``sample_size`` is the number of documents carrying at least one summarised score.
    """

    name: ClassVar[str] = "scores"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        _parse(params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        names = _parse(params)[2]
        if names is None:
            return ValueNames((), tuple(f"<score>.{statistic}" for statistic in STATISTICS))
        exact = tuple(f"{name}.{statistic}" for name in names for statistic in STATISTICS)
        return ValueNames(exact, hint="scores outside params.names are not summarised")

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        bar, bars, names = _parse(params)
        return ScoresAccumulator(bar, bars, names)


def _parse(params: Mapping[str, Any]) -> tuple[float, dict[str, float], tuple[str, ...] | None]:
    check.reject_unknown(params, {"bar", "bars", "names"})
    bar = check.number(params, "bar", DEFAULT_BAR)
    assert bar is not None
    bars = {
        name: check.finite(v, f"bars.{name}") for name, v in check.mapping(params, "bars").items()
    }
    names = check.names(params, "names", ()) if "names" in params else None
    if names == ():
        raise ValueError("names: list at least one score name (or leave it out for all)")
    return bar, bars, names


class _Score:
    def __init__(self, bar: float, cap: int) -> None:
        self.bar = bar
        self.sample = Sample(cap)
        self.below = 0


class ScoresAccumulator:
    def __init__(
        self,
        bar: float,
        bars: Mapping[str, float],
        names: tuple[str, ...] | None,
        cap: int = EXACT_CAP,
    ) -> None:
        self.bar = bar
        self.bars = dict(bars)
        self.names = names
        self.cap = cap
        self.scores: dict[str, _Score] = {}
        self.untracked: set[str] = set()
        self.scored_documents = 0
        for name in names or ():
            self._score(name)

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        page = columns(documents)
        wanted = page.score_names if self.names is None else self.names
        scored = np.zeros(page.size, dtype=np.bool_)
        for name in wanted:
            score = self._score(name)
            if score is None:
                continue
            column = page.score(name)
            scored |= ~np.isnan(column)
            values = present(column)
            score.below += int(np.count_nonzero(values < score.bar))
            score.sample.add(values)
        self.scored_documents += int(np.count_nonzero(scored))

    def _score(self, name: str) -> _Score | None:
        found = self.scores.get(name)
        if found is None:
            if len(self.scores) >= MAX_SCORE_NAMES:
                self.untracked.add(name)
                return None
            found = self.scores[name] = _Score(self.bars.get(name, self.bar), self.cap)
        return found

    def finish(self) -> MetricOutcome:
        values: dict[str, float | None] = {}
        exact = {}
        for name in sorted(self.scores):
            score = self.scores[name]
            count = score.sample.count
            values[f"{name}.count"] = count
            values[f"{name}.mean"] = score.sample.mean
            found = (
                score.sample.distribution().quantiles(list(PERCENTILES.values()))
                if count
                else [None, None]
            )
            values.update({f"{name}.{p}": v for p, v in zip(PERCENTILES, found, strict=True)})
            values[f"{name}.below"] = score.below / count if count else None
            exact[name] = score.sample.exact
        details: dict[str, Any] = {
            "bars": {name: score.bar for name, score in sorted(self.scores.items())},
            "exact": exact,
        }
        if self.untracked:
            details["untracked"] = sorted(self.untracked)[:20]
        if not self.scored_documents:
            reason = "no document in the window carried a score"
            return MetricOutcome(values, 0, "insufficient_data", reason, details)
        return MetricOutcome(values, self.scored_documents, details=details)
