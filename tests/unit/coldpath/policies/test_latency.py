"""latency: percentiles, mean and SLO attainment against numpy on the raw latencies."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from coldpath.policies.latency import LatencyAccumulator, LatencyMetric
from coldpath.policies.sketch import RELATIVE_ACCURACY
from schemas import AppConfig
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

RNG = np.random.default_rng(20260301)
LATENCIES = [float(x) for x in np.round(RNG.lognormal(6.0, 0.8, 997), 3)]


def _window() -> list:
    docs = [make_doc(i, latency_ms=v) for i, v in enumerate(LATENCIES)]
    # Documents without latency are counted as missing, not fatal.
    docs += [make_doc(10_000 + i) for i in range(3)]
    return docs


def test_percentiles_mean_and_slo_attainment_are_exact() -> None:
    app = AppConfig.model_validate({"slo": {"latency_threshold_ms": 600.0}})
    outcome = evaluate(LatencyMetric(), pages_of(_window(), 128), app=app)

    assert outcome.status == "ok"
    assert outcome.sample_size == 997
    assert outcome.values["count"] == 997
    assert outcome.values["missing"] == 3
    for name, q in {"p50": 50, "p90": 90, "p95": 95, "p99": 99}.items():
        expected = np.percentile(LATENCIES, q, method="linear")
        assert outcome.values[name] == pytest.approx(expected, rel=1e-12)
    assert outcome.values["mean"] == pytest.approx(statistics.fmean(LATENCIES), rel=1e-12)
    within = sum(1 for v in LATENCIES if v <= 600.0)
    assert outcome.values["slo_attainment"] == within / 997


def test_threshold_param_overrides_the_app_slo() -> None:
    outcome = evaluate(LatencyMetric(), [_window()], {"threshold_ms": 250.0})
    assert outcome.values["slo_attainment"] == sum(1 for v in LATENCIES if v <= 250.0) / 997
    assert outcome.details["threshold_ms"] == 250.0


def test_sketch_mode_percentiles_stay_within_the_stated_relative_error() -> None:
    accumulator = LatencyAccumulator(threshold_ms=600.0, cap=100)
    docs = _window()
    for page in pages_of(docs, 64):
        accumulator.add(page)
    outcome = accumulator.finish()

    assert outcome.details["exact"] is False
    ordered = sorted(LATENCIES)
    for name, q in {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}.items():
        h = (len(ordered) - 1) * q
        low, high = ordered[int(h)], ordered[min(int(h) + 1, len(ordered) - 1)]
        exact = low + (h - int(h)) * (high - low)
        bound = RELATIVE_ACCURACY * max(abs(low), abs(high)) * (1 + 1e-9)
        value = outcome.values[name]
        assert value is not None
        assert abs(value - exact) <= bound
    # Mean and attainment do not go through the sketch: still exact.
    assert outcome.values["mean"] == pytest.approx(statistics.fmean(LATENCIES), rel=1e-12)
    assert outcome.values["slo_attainment"] == sum(1 for v in LATENCIES if v <= 600.0) / 997


def test_no_document_or_no_latency_is_insufficient_data_not_a_crash() -> None:
    empty = evaluate(LatencyMetric(), [])
    assert empty.status == "insufficient_data"
    assert empty.values["p95"] is None
    assert empty.sample_size == 0
    without = evaluate(LatencyMetric(), [[make_doc(1), make_doc(2)]])
    assert without.status == "insufficient_data"
    assert without.values["missing"] == 2
    assert without.reason


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"threshold_ms": -1}, "threshold_ms"),
        ({"threshold_ms": "x"}, "threshold_ms"),
        ({"p": 1}, "p"),
    ],
)
def test_bad_params_are_rejected_naming_the_parameter(params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        LatencyMetric().validate_params(params)
