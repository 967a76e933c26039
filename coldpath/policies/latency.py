"""Latency of a window: how many requests reported one, percentiles, mean and SLO attainment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.columns import columns, present
from coldpath.policies.sketch import EXACT_CAP, Sample
from schemas import AppConfig, TelemetryDocument

PERCENTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
VALUE_NAMES = ValueNames(("count", "missing", "mean", *PERCENTILES, "slo_attainment"))


class LatencyMetric:
    """``latency`` v1 — values ``count``, ``missing``, ``mean``, ``p50``, ``p90``, ``p95``, ``p99``,
    ``slo_attainment``.

    ``count`` documents carried ``latency_ms``; ``missing`` did not (counted, not an error).
    Percentiles use linear interpolation (numpy's and pandas' default) and are exact up to
    100,000 latencies per window, then within 0.5 % relative (``coldpath.policies.sketch``).
    ``mean`` and ``slo_attainment`` — the share of latencies ≤ the threshold, the app's
    ``slo.latency_threshold_ms`` unless the ``threshold_ms`` parameter overrides it — are exact.
    No latency in the window → every value None, status ``insufficient_data``.
    """

    name: ClassVar[str] = "latency"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check.reject_unknown(params, {"threshold_ms"})
        check.number(params, "threshold_ms", None, positive=True)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return VALUE_NAMES

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        self.validate_params(params)
        threshold = check.number(params, "threshold_ms", app.slo.latency_threshold_ms)
        assert threshold is not None
        return LatencyAccumulator(threshold)


class LatencyAccumulator:
    def __init__(self, threshold_ms: float, cap: int = EXACT_CAP) -> None:
        self.threshold_ms = threshold_ms
        self.sample = Sample(cap)
        self.documents = 0
        self.within = 0

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        values = present(columns(documents).latency_ms)
        self.documents += len(documents)
        self.within += int(np.count_nonzero(values <= self.threshold_ms))
        self.sample.add(values)

    def finish(self) -> MetricOutcome:
        count = self.sample.count
        values: dict[str, float | None] = {"count": count, "missing": self.documents - count}
        details = {"threshold_ms": self.threshold_ms, "exact": self.sample.exact}
        if not count:
            values.update(dict.fromkeys(["mean", *PERCENTILES, "slo_attainment"]))
            reason = "no document in the window reported latency_ms"
            return MetricOutcome(values, 0, "insufficient_data", reason, details)
        found = self.sample.distribution().quantiles(list(PERCENTILES.values()))
        values.update(zip(PERCENTILES, found, strict=True))
        values["mean"] = self.sample.mean
        values["slo_attainment"] = self.within / count
        return MetricOutcome(values, count, details=details)
