"""The catalogue: every built-in metric by name, a clear error for unknown names, and each
metric honouring the protocol's promises on an empty window."""

from __future__ import annotations

import pytest

from coldpath.policies.catalogue import BUILT_IN, CATALOGUE, get_metric
from tests.unit.coldpath.policies.support import evaluate


def test_built_in_metrics_are_registered_by_name() -> None:
    for name in ("latency", "errors", "usage", "scores", "drift"):
        assert get_metric(name).name == name
    assert {metric.name for metric in BUILT_IN} <= CATALOGUE.keys()


def test_unknown_metric_lists_the_known_names() -> None:
    with pytest.raises(KeyError, match=r"unknown metric 'latncy'.*drift, errors, latency"):
        get_metric("latncy")


@pytest.mark.parametrize("metric", BUILT_IN, ids=lambda m: m.name)
def test_versioned_and_empty_windows_are_insufficient(metric) -> None:
    assert isinstance(metric.version, int) and metric.version >= 1
    assert metric.__doc__ and f"v{metric.version}" in metric.__doc__
    metric.validate_params({})
    outcome = evaluate(metric, [], reference=[])
    assert outcome.status == "insufficient_data"
    assert outcome.sample_size == 0
    assert all(value is None or value == 0 for value in outcome.values.values())
