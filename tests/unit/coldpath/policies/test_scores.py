"""scores: per score name mean, p10, p50 and share below the bar, against numpy."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from coldpath.policies.scores import ScoresMetric
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

RNG = np.random.default_rng(7)
RELEVANCE = [float(x) for x in np.round(RNG.beta(5, 2, 400), 4)]
TOXICITY = [float(x) for x in np.round(RNG.beta(1, 20, 250), 4)]


def _window() -> list:
    docs = []
    for i, relevance in enumerate(RELEVANCE):
        scores = {"relevance": relevance}
        if i < len(TOXICITY):
            scores["toxicity"] = TOXICITY[i]
        docs.append(make_doc(i, scores=scores))
    docs += [make_doc(1000 + i) for i in range(10)]  # no scores at all
    return docs


def _check(values: dict, name: str, raw: list[float], bar: float) -> None:
    assert values[f"{name}.count"] == len(raw)
    assert values[f"{name}.mean"] == pytest.approx(statistics.fmean(raw), rel=1e-12)
    assert values[f"{name}.p10"] == pytest.approx(
        np.percentile(raw, 10, method="linear"), rel=1e-12
    )
    assert values[f"{name}.p50"] == pytest.approx(
        np.percentile(raw, 50, method="linear"), rel=1e-12
    )
    assert values[f"{name}.below"] == sum(1 for x in raw if x < bar) / len(raw)


def test_each_score_is_summarised_with_its_bar() -> None:
    params = {"bar": 0.6, "bars": {"toxicity": 0.05}}
    outcome = evaluate(ScoresMetric(), pages_of(_window(), 33), params)
    assert outcome.status == "ok"
    assert outcome.sample_size == 400
    _check(dict(outcome.values), "relevance", RELEVANCE, 0.6)
    _check(dict(outcome.values), "toxicity", TOXICITY, 0.05)
    assert outcome.details["bars"] == {"relevance": 0.6, "toxicity": 0.05}


def test_names_restrict_and_report_absent_scores_as_none() -> None:
    outcome = evaluate(ScoresMetric(), [_window()], {"names": ["toxicity", "groundedness"]})
    assert "relevance.mean" not in outcome.values
    _check(dict(outcome.values), "toxicity", TOXICITY, 0.5)
    assert outcome.values["groundedness.count"] == 0
    assert outcome.values["groundedness.p50"] is None


def test_no_scores_is_insufficient_data() -> None:
    outcome = evaluate(ScoresMetric(), [[make_doc(1)]])
    assert outcome.status == "insufficient_data"
    assert evaluate(ScoresMetric(), []).sample_size == 0


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"bar": "high"}, "bar"),
        ({"bars": {"toxicity": None}}, "bars.toxicity"),
        ({"names": "relevance"}, "names"),
        ({"names": []}, "names"),
        ({"threshold": 1}, "threshold"),
    ],
)
def test_bad_params_are_rejected_naming_the_parameter(params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        ScoresMetric().validate_params(params)
