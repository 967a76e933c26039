"""The catalogue: every built-in metric by name, a clear error for unknown names, and each
metric honouring the protocol's promises on an empty window."""

from __future__ import annotations

from typing import Any

import pytest

from coldpath.policies.base import Metric
from coldpath.policies.catalogue import BUILT_IN, CATALOGUE, get_metric
from coldpath.policies.text import TEXT_METRICS
from schemas import TelemetryDocument
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of


def test_built_in_metrics_are_registered_by_name() -> None:
    for name in ("latency", "errors", "usage", "scores", "drift"):
        assert get_metric(name).name == name
    assert {metric.name for metric in BUILT_IN} <= CATALOGUE.keys()


def test_unknown_metric_lists_the_known_names() -> None:
    with pytest.raises(KeyError, match=r"unknown metric 'latncy'.*drift, errors, latency"):
        get_metric("latncy")


@pytest.mark.parametrize("metric", BUILT_IN, ids=lambda m: m.name)
def test_versioned_and_empty_windows_are_insufficient(metric: Metric) -> None:
    assert isinstance(metric.version, int) and metric.version >= 1
    assert metric.__doc__ and f"v{metric.version}" in metric.__doc__
    metric.validate_params({})
    outcome = evaluate(metric, [], reference=[])
    assert outcome.status == "insufficient_data"
    assert outcome.sample_size == 0
    assert all(value is None or value == 0 for value in outcome.values.values())


# A window every built-in metric has something to say about, and parameters that declare
# every data-derived name it holds (the error types, the score names).
RICH_PARAMS: dict[str, dict[str, Any]] = {
    "errors": {"types": ["timeout"]},
    "scores": {},
    "drift": {"metadata": ["locale"], "min_samples": 2},
}


def _rich_window() -> list[TelemetryDocument]:
    return [
        make_doc(
            n,
            latency_ms=100.0 + n,
            error_type="timeout" if n % 4 == 0 else None,
            tokens=(10 + n, 5),
            model_id="gpt",
            model_version="v1",
            scores={"toxicity": n / 10},
            metadata={"locale": "en" if n % 2 else "fr"},
            output_text="x" * n,
        )
        for n in range(10)
    ]


@pytest.mark.parametrize("metric", BUILT_IN, ids=lambda m: m.name)
def test_value_names_cover_every_value_an_outcome_reports(metric: Metric) -> None:
    # value_names decides which thresholds load: a name the outcome reports but value_names
    # omits could never be judged, and one value_names lists but the outcome lacks would be
    # accepted and then never be there.
    params = RICH_PARAMS.get(metric.name, {})
    names = metric.value_names(params)
    window = _rich_window()
    outcome = evaluate(metric, pages_of(window, 4), params, reference=pages_of(window, 3))
    assert outcome.status == "ok", outcome.reason
    assert [name for name in outcome.values if name not in names] == []
    assert set(names.exact) <= set(outcome.values)


@pytest.mark.parametrize("metric", TEXT_METRICS.values(), ids=lambda m: m.name)
def test_text_metrics_value_names_cover_their_outcome(metric: Metric) -> None:
    outcome = evaluate(metric, [_rich_window()])
    names = metric.value_names({})
    assert [name for name in outcome.values if name not in names] == []
