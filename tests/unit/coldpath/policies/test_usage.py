"""usage: token means and totals, cost from the price table, unpriced models counted."""

from __future__ import annotations

import pytest

from coldpath.policies.usage import UsageMetric
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

PRICES = {
    "prices": {
        "gpt-4o": {"input_per_1k": 0.0025, "output_per_1k": 0.01},
        "gpt-4o-mini": {"input_per_1k": 0.00015, "output_per_1k": 0.0006},
    }
}
ROWS = [
    ("gpt-4o", (1200, 300)),
    ("gpt-4o", (800, 150)),
    ("gpt-4o-mini", (4000, 1000)),
    ("llama-3", (500, 500)),  # no price, no default: unpriced
    (None, (100, 10)),  # no model at all: unpriced
    ("gpt-4o", None),  # no tokens reported
]


def _window() -> list:
    return [make_doc(i, model_id=m, tokens=t) for i, (m, t) in enumerate(ROWS)]


def _cost(model: str, tokens: tuple[int, int]) -> float:
    price = PRICES["prices"][model]
    return tokens[0] / 1000 * price["input_per_1k"] + tokens[1] / 1000 * price["output_per_1k"]


def test_tokens_and_cost_from_the_price_table() -> None:
    outcome = evaluate(UsageMetric(), pages_of(_window(), 4), PRICES)
    reported = [t for _, t in ROWS if t is not None]
    priced = [(m, t) for m, t in ROWS if t is not None and m in PRICES["prices"]]
    cost = sum(_cost(m, t) for m, t in priced)

    assert outcome.status == "ok"
    assert outcome.sample_size == 5
    v = outcome.values
    assert v["requests"] == 6
    assert v["with_tokens"] == 5
    assert v["without_tokens"] == 1
    assert v["tokens_in_total"] == sum(t[0] for t in reported) == 6600
    assert v["tokens_out_total"] == sum(t[1] for t in reported) == 1960
    assert v["tokens_total"] == 8560
    assert v["tokens_in_mean"] == pytest.approx(6600 / 5, rel=1e-15)
    assert v["tokens_out_mean"] == pytest.approx(1960 / 5, rel=1e-15)
    assert v["unpriced"] == 2
    assert v["cost"] == pytest.approx(cost, rel=1e-12)
    assert v["cost"] == pytest.approx(0.003 + 0.003 + 0.002 + 0.0015 + 0.0006 + 0.0006, rel=1e-12)
    assert v["cost_per_request"] == pytest.approx(cost / 3, rel=1e-12)
    assert outcome.details["cost_by_price"]["gpt-4o-mini"] == pytest.approx(
        _cost("gpt-4o-mini", (4000, 1000))
    )


def test_default_price_covers_other_models() -> None:
    params = {**PRICES, "default": {"input_per_1k": 0.001, "output_per_1k": 0.002}}
    outcome = evaluate(UsageMetric(), [_window()], params)
    default_cost = (500 * 0.001 + 500 * 0.002 + 100 * 0.001 + 10 * 0.002) / 1000
    expected = sum(_cost(m, t) for m, t in ROWS if t is not None and m in PRICES["prices"])
    assert outcome.values["unpriced"] == 0
    assert outcome.values["cost"] == pytest.approx(expected + default_cost, rel=1e-12)


def test_without_prices_everything_is_unpriced_not_free() -> None:
    outcome = evaluate(UsageMetric(), [_window()])
    assert outcome.values["unpriced"] == 5
    assert outcome.values["cost"] is None
    assert outcome.values["tokens_total"] == 8560


def test_no_tokens_is_insufficient_data() -> None:
    outcome = evaluate(UsageMetric(), [[make_doc(1), make_doc(2)]], PRICES)
    assert outcome.status == "insufficient_data"
    assert outcome.values["tokens_in_mean"] is None
    assert outcome.values["without_tokens"] == 2


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"prices": {"m": {"input_per_1k": -1, "output_per_1k": 0}}}, "prices.m.input_per_1k"),
        ({"prices": {"m": {"input_per_1k": 1}}}, "prices.m.output_per_1k"),
        (
            {"prices": {"m": {"input_per_1k": 1, "output_per_1k": 1, "cached": 1}}},
            "prices.m.cached",
        ),
        ({"prices": ["gpt-4o"]}, "prices"),
        ({"default": 3}, "default"),
        ({"currency": "EUR"}, "currency"),
    ],
)
def test_bad_prices_are_rejected_naming_the_parameter(params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        UsageMetric().validate_params(params)
