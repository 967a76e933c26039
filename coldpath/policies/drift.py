"""Drift of a window against a reference window (the previous window or a pinned baseline):
PSI and two-sample KS for numeric signals, Jensen–Shannon divergence for categorical ones."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.columns import Category, Columns, FloatArray, columns, present
from coldpath.policies.distance import clamp_unit, jensen_shannon, ks_statistic, psi
from coldpath.policies.sketch import EXACT_CAP, Sample, comparable
from coldpath.policies.tally import BoundedCounts
from schemas import AppConfig, TelemetryDocument

NUMERIC: dict[str, Callable[[Columns], FloatArray]] = {
    "latency_ms": lambda page: page.latency_ms,
    "output_chars": lambda page: page.output_chars,
    "tokens_total": lambda page: page.tokens_total,
}
CATEGORICAL: dict[str, Callable[[Columns], list[Category]]] = {
    "model_id": lambda page: list(page.model_ids),
    "model_version": lambda page: list(page.model_versions),
    "status": lambda page: [str(status) for status in page.statuses],
    "error_type": lambda page: list(page.error_types),
}
# "scores" in ``numeric`` stands for every score name seen in either window.
ALL_SCORES = "scores"
DEFAULT_NUMERIC = ("latency_ms", "output_chars", "tokens_total", ALL_SCORES)
DEFAULT_CATEGORICAL = ("model_version", "status")
DEFAULT_BINS = 10
DEFAULT_MIN_SAMPLES = 30
MAX_SCORE_NAMES = 64


class DriftMetric:
    """``drift`` v1 — values ``psi.<signal>`` and ``ks.<signal>`` for each numeric signal
    (``latency_ms``, ``output_chars``, ``tokens_total``, ``score.<name>``) and ``js.<field>``
    for each categorical one (``model_version``, ``status``, ``metadata.<key>``...).

    Parameters: ``numeric`` (default latency_ms, output_chars, tokens_total and ``scores`` =
    every score; ``score.<name>`` picks one), ``categorical`` (default model_version and
    status; also model_id, error_type), ``metadata`` (metadata keys compared as categories),
    ``bins`` (PSI buckets, default 10) and ``min_samples`` (default 30: fewer values in either
    window → that value is None, with the reason in ``details.insufficient``). A missing field
    leaves the document out of a numeric signal; for a categorical one "missing" is a category.

    Definitions in ``coldpath.policies.distance``. Accuracy: exact while both windows hold at
    most 100,000 values of the signal; beyond that KS and PSI are the exact statistics of both
    samples quantised to 0.5 % relative precision (``coldpath.policies.sketch``; the details
    list such signals under ``quantised``). JS is exact up to 1,000 distinct categories per
    field; later ones are pooled as ``_other``. An empty window or reference → every value
    None and status ``insufficient_data``.
    """

    name: ClassVar[str] = "drift"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = True

    def validate_params(self, params: Mapping[str, Any]) -> None:
        _Settings(params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        settings = _Settings(params)
        numeric = [s for s in settings.numeric if s != ALL_SCORES]
        fields = [*settings.categorical, *(f"metadata.{key}" for key in settings.metadata)]
        exact = (
            *(f"{test}.{signal}" for signal in numeric for test in ("psi", "ks")),
            *(f"js.{field}" for field in fields),
        )
        patterns = ("psi.score.<name>", "ks.score.<name>") if settings.all_scores else ()
        hint = "list the signals in params.numeric, categorical or metadata"
        return ValueNames(exact, patterns, hint)

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return DriftAccumulator(_Settings(params))


class _Settings:
    def __init__(self, params: Mapping[str, Any]) -> None:
        check.reject_unknown(params, {"numeric", "categorical", "metadata", "bins", "min_samples"})
        self.numeric = check.names(params, "numeric", DEFAULT_NUMERIC)
        for signal in self.numeric:
            if signal not in NUMERIC and signal != ALL_SCORES and not signal.startswith("score."):
                known = ", ".join([*NUMERIC, ALL_SCORES, "score.<name>"])
                raise ValueError(f"numeric: unknown signal {signal!r} (known: {known})")
        self.categorical = check.names(params, "categorical", DEFAULT_CATEGORICAL)
        for field in self.categorical:
            if field not in CATEGORICAL:
                known = ", ".join(CATEGORICAL)
                raise ValueError(f"categorical: unknown field {field!r} (known: {known})")
        self.metadata = check.names(params, "metadata", ())
        self.bins = check.integer(params, "bins", DEFAULT_BINS, low=2, high=100)
        self.min_samples = check.integer(
            params, "min_samples", DEFAULT_MIN_SAMPLES, low=1, high=10**9
        )
        self.all_scores = ALL_SCORES in self.numeric
        self.fixed_scores = tuple(
            s.removeprefix("score.") for s in self.numeric if s.startswith("score.")
        )


class _Side:
    """What one window contributes: a sample per numeric signal, counts per categorical one."""

    def __init__(self, settings: _Settings, cap: int) -> None:
        self.settings = settings
        self.cap = cap
        self.documents = 0
        self.numeric = {signal: Sample(cap) for signal in settings.numeric if signal in NUMERIC}
        self.scores: dict[str, Sample] = {name: Sample(cap) for name in settings.fixed_scores}
        self.categorical = {field: BoundedCounts() for field in settings.categorical}
        self.metadata = {key: BoundedCounts() for key in settings.metadata}

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        page = columns(documents)
        self.documents += page.size
        for signal, sample in self.numeric.items():
            sample.add(present(NUMERIC[signal](page)))
        if self.settings.all_scores:
            for name in page.score_names:
                if name not in self.scores and len(self.scores) < MAX_SCORE_NAMES:
                    self.scores[name] = Sample(self.cap)
        for name, sample in self.scores.items():
            sample.add(present(page.score(name)))
        for field, counts in self.categorical.items():
            counts.add(CATEGORICAL[field](page))
        for key, counts in self.metadata.items():
            counts.add(page.metadata(key))


class DriftAccumulator:
    def __init__(self, settings: _Settings, cap: int = EXACT_CAP) -> None:
        self.settings = settings
        self.reference = _Side(settings, cap)
        self.current = _Side(settings, cap)

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        self.reference.add(documents)

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        self.current.add(documents)

    def finish(self) -> MetricOutcome:
        settings = self.settings
        values: dict[str, float | None] = {}
        insufficient: dict[str, str] = {}
        quantised: list[str] = []
        sizes: dict[str, dict[str, int]] = {}
        ref, cur = self.reference, self.current
        numeric = [(s, ref.numeric[s], cur.numeric[s]) for s in cur.numeric]
        for name in sorted(ref.scores.keys() | cur.scores.keys()):
            numeric.append(
                (f"score.{name}", ref.scores.get(name, Sample()), cur.scores.get(name, Sample()))
            )
        for signal, before, now in numeric:
            sizes[signal] = {"reference": before.count, "current": now.count}
            values[f"psi.{signal}"] = values[f"ks.{signal}"] = None
            short = min(before.count, now.count)
            if short < settings.min_samples:
                insufficient[signal] = _too_few(before.count, now.count, settings.min_samples)
                continue
            reference, current, coarse = comparable(before, now)
            if coarse:
                quantised.append(signal)
            values[f"psi.{signal}"] = psi(reference, current, settings.bins)
            values[f"ks.{signal}"] = clamp_unit(ks_statistic(reference, current))
        categorical = [(f, ref.categorical[f], cur.categorical[f]) for f in cur.categorical]
        categorical += [(f"metadata.{k}", ref.metadata[k], cur.metadata[k]) for k in cur.metadata]
        for field, before_counts, now_counts in categorical:
            sizes[field] = {"reference": before_counts.total, "current": now_counts.total}
            values[f"js.{field}"] = None
            if min(before_counts.total, now_counts.total) < settings.min_samples:
                insufficient[field] = _too_few(
                    before_counts.total, now_counts.total, settings.min_samples
                )
                continue
            values[f"js.{field}"] = clamp_unit(
                jensen_shannon(before_counts.counts, now_counts.counts)
            )
        details: dict[str, Any] = {
            "sizes": sizes,
            "insufficient": insufficient,
            "quantised": quantised,
        }
        n = cur.documents
        if not n or not ref.documents:
            which = "window" if not n else "reference window"
            return MetricOutcome(
                values, n, "insufficient_data", f"no document in the {which}", details
            )
        if all(value is None for value in values.values()):
            reason = (
                "; ".join(f"{k}: {v}" for k, v in insufficient.items()) or "no signal to compare"
            )
            return MetricOutcome(values, n, "insufficient_data", reason, details)
        return MetricOutcome(values, n, details=details)


def _too_few(reference: int, current: int, minimum: int) -> str:
    return f"{reference} reference and {current} current values, fewer than {minimum} in one"
