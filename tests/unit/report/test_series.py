from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from report.prices import PriceTable, TokenPrice
from report.series import ScoreSample, SeriesAccumulator
from schemas import SloConfig, TelemetryDocument
from tests.unit.report.docs import T0, doc

SLO = SloConfig(latency_threshold_ms=500.0, error_budget=0.01, latency_budget=0.05)


def stream(seconds: int, per_second: int = 2) -> list[TelemetryDocument]:
    """``per_second`` documents a second; every 7th an error, every 5th over the SLO."""
    docs = []
    for n in range(seconds * per_second):
        docs.append(
            doc(
                "a",
                T0 + timedelta(seconds=n / per_second),
                latency_ms=900.0 if n % 5 == 0 else 100.0,
                error=n % 7 == 0,
                tokens=(10, 2),
                model_id="m1" if n % 2 else "m2",
                scores={"s": (n % 10) / 10},
                number=n,
            )
        )
    return docs


def pages(docs: list[TelemetryDocument], size: int) -> list[list[TelemetryDocument]]:
    return [docs[i : i + size] for i in range(0, len(docs), size)]


def test_counts_are_exact_per_bucket() -> None:
    accumulator = SeriesAccumulator("a", SLO, max_buckets=100)
    for page in pages(stream(10), 3):
        accumulator.add(page)
    series = accumulator.finish()
    assert series.width_s == 1
    assert len(series.starts) == 10 and series.starts[0] == T0
    assert list(series.count) == [2] * 10
    assert int(series.errors.sum()) == len([n for n in range(20) if n % 7 == 0])
    assert list(series.over_slo) == [(2 * k) % 5 == 0 or (2 * k + 1) % 5 == 0 for k in range(10)]
    assert list(series.tokens_in) == [20.0] * 10 and list(series.tokens_out) == [4.0] * 10
    assert not series.priced


def test_buckets_widen_up_the_ladder_and_fold_exactly() -> None:
    docs = stream(600)  # ten minutes
    folded = SeriesAccumulator("a", SLO, max_buckets=30)
    for page in pages(docs, 50):
        folded.add(page)
    direct = SeriesAccumulator("a", SLO, max_buckets=30, min_width_s=30)
    direct.add(docs)
    a, b = folded.finish(), direct.finish()
    assert a.width_s == b.width_s == 30
    assert len(a.starts) <= 30
    for name in ("count", "errors", "with_latency", "over_slo", "tokens_in"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert np.array_equal(a.latency_percentiles, b.latency_percentiles)


def test_page_order_does_not_matter_and_apps_share_an_axis_after_widening() -> None:
    docs = stream(120)
    forward = SeriesAccumulator("a", SLO, max_buckets=50)
    backward = SeriesAccumulator("a", SLO, max_buckets=50)
    for page in pages(docs, 40):
        forward.add(page)
    for page in reversed(pages(docs, 40)):
        backward.add(page)
    forward.widen_to(60)
    backward.widen_to(60)
    a, b = forward.finish(), backward.finish()
    assert a.starts == b.starts and np.array_equal(a.count, b.count)
    assert list(a.count) == [120, 120]
    with pytest.raises(ValueError, match="narrow"):
        forward.widen_to(10)


def test_cost_uses_the_price_table_and_counts_unpriced_models() -> None:
    prices = PriceTable(prices={"m1": TokenPrice(input_per_1k=1.0, output_per_1k=2.0)})
    accumulator = SeriesAccumulator("a", SLO, prices, max_buckets=100)
    accumulator.add(stream(2))
    series = accumulator.finish()
    # m1 on odd documents: 10 * 0.001 + 2 * 0.002 per request, one per second; m2 unpriced.
    assert series.priced
    assert list(series.cost) == pytest.approx([0.014, 0.014])
    assert list(series.unpriced) == [1, 1]


def test_burn_rates_divide_by_the_budgets() -> None:
    accumulator = SeriesAccumulator("a", SLO, max_buckets=100)
    accumulator.add(stream(5))
    series = accumulator.finish()
    assert series.error_burn == pytest.approx(series.error_rate / 0.01)
    assert series.latency_burn == pytest.approx(series.over_slo / series.with_latency / 0.05)


def test_a_score_sample_is_bounded_seeded_and_drawn_from_the_input() -> None:
    values = np.arange(10_000, dtype=np.float64)
    one, two = ScoreSample(size=100, seed=1), ScoreSample(size=100, seed=1)
    for chunk in np.array_split(values, 7):
        one.add(chunk)
        two.add(chunk)
    assert one.seen == 10_000 and len(one.values) == 100
    assert np.array_equal(one.values, two.values)
    assert set(one.values) <= set(values)
    # Uniform: the sample's mean is near the input's (5 standard errors).
    assert abs(one.values.mean() - values.mean()) < 5 * values.std() / 10
