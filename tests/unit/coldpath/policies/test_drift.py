"""drift: PSI, KS and Jensen–Shannon computed here by hand from their definitions."""

from __future__ import annotations

import math
from collections import Counter
from itertools import pairwise

import numpy as np
import pytest

from coldpath.policies.drift import DriftAccumulator, DriftMetric, _Settings
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

RNG = np.random.default_rng(99)
REF_LATENCY = [float(x) for x in np.round(RNG.lognormal(5.0, 0.5, 600), 2)]
CUR_LATENCY = [float(x) for x in np.round(RNG.lognormal(5.2, 0.6, 500), 2)]
REF_SCORE = [float(x) for x in np.round(RNG.uniform(0, 1, 600), 3)]
CUR_SCORE = [float(x) for x in np.round(RNG.uniform(0.1, 1, 500), 3)]
REF_VERSIONS = ["v1"] * 450 + ["v2"] * 150
CUR_VERSIONS = ["v1"] * 100 + ["v2"] * 300 + [None] * 100
REF_CHANNEL = ["web"] * 300 + ["app"] * 300
CUR_CHANNEL = ["web"] * 100 + ["app"] * 350 + ["api"] * 50


def ks_by_hand(a: list[float], b: list[float]) -> float:
    def ecdf(sample: list[float], x: float) -> float:
        return sum(1 for v in sample if v <= x) / len(sample)

    return max(abs(ecdf(a, x) - ecdf(b, x)) for x in set(a) | set(b))


def psi_by_hand(ref: list[float], cur: list[float], bins: int = 10) -> float:
    edges = sorted(
        set(np.percentile(ref, [100 * k / bins for k in range(1, bins)], method="linear"))
    )
    bounds = [-math.inf, *edges, math.inf]
    total = 0.0
    for low, high in pairwise(bounds):
        r = max(sum(1 for v in ref if low < v <= high) / len(ref), 1e-4)
        c = max(sum(1 for v in cur if low < v <= high) / len(cur), 1e-4)
        total += (c - r) * math.log(c / r)
    return total


def js_by_hand(ref: list, cur: list) -> float:
    p, q = Counter(ref), Counter(cur)
    total = 0.0
    for key in set(p) | set(q):
        pk, qk = p[key] / len(ref), q[key] / len(cur)
        m = (pk + qk) / 2
        total += (pk * math.log2(pk / m) if pk else 0.0) / 2 + (
            qk * math.log2(qk / m) if qk else 0.0
        ) / 2
    return total


def _docs(latency, scores, versions, channels, offset):
    return [
        make_doc(
            offset + i,
            latency_ms=latency[i],
            scores={"relevance": scores[i]},
            model_version=versions[i],
            metadata={"channel": channels[i]},
            tokens=(100 + i % 7, 50) if i % 2 else None,
            output_text="x" * (i % 40) if i % 3 else None,
        )
        for i in range(len(latency))
    ]


REFERENCE = _docs(REF_LATENCY, REF_SCORE, REF_VERSIONS, REF_CHANNEL, 0)
CURRENT = _docs(CUR_LATENCY, CUR_SCORE, CUR_VERSIONS, CUR_CHANNEL, 10_000)


def test_psi_ks_and_js_match_their_definitions() -> None:
    outcome = evaluate(
        DriftMetric(),
        pages_of(CURRENT, 77),
        {"metadata": ["channel"]},
        reference=pages_of(REFERENCE, 100),
    )
    v = outcome.values
    assert outcome.status == "ok"
    assert outcome.sample_size == 500
    assert v["ks.latency_ms"] == pytest.approx(ks_by_hand(REF_LATENCY, CUR_LATENCY), abs=1e-12)
    assert v["psi.latency_ms"] == pytest.approx(psi_by_hand(REF_LATENCY, CUR_LATENCY), rel=1e-9)
    assert v["ks.score.relevance"] == pytest.approx(ks_by_hand(REF_SCORE, CUR_SCORE), abs=1e-12)
    assert v["psi.score.relevance"] == pytest.approx(psi_by_hand(REF_SCORE, CUR_SCORE), rel=1e-9)
    assert v["js.model_version"] == pytest.approx(js_by_hand(REF_VERSIONS, CUR_VERSIONS), abs=1e-12)
    assert v["js.metadata.channel"] == pytest.approx(
        js_by_hand(REF_CHANNEL, CUR_CHANNEL), abs=1e-12
    )
    assert v["js.status"] == 0.0
    # Missing fields leave documents out of a numeric signal: only odd ones carry tokens.
    ref_tokens = [float(150 + i % 7) for i in range(600) if i % 2]
    cur_tokens = [float(150 + i % 7) for i in range(500) if i % 2]
    assert outcome.details["sizes"]["tokens_total"] == {"reference": 300, "current": 250}
    assert v["ks.tokens_total"] == pytest.approx(ks_by_hand(ref_tokens, cur_tokens), abs=1e-12)
    assert v["psi.tokens_total"] == pytest.approx(psi_by_hand(ref_tokens, cur_tokens), rel=1e-9)
    ref_chars = [float(i % 40) for i in range(600) if i % 3]
    cur_chars = [float(i % 40) for i in range(500) if i % 3]
    assert v["ks.output_chars"] == pytest.approx(ks_by_hand(ref_chars, cur_chars), abs=1e-12)
    assert outcome.details["quantised"] == []


def test_identical_windows_show_no_drift() -> None:
    outcome = evaluate(DriftMetric(), [REFERENCE], reference=[REFERENCE])
    assert outcome.values["ks.latency_ms"] == 0.0
    assert outcome.values["psi.latency_ms"] == pytest.approx(0.0, abs=1e-15)
    assert outcome.values["js.model_version"] == 0.0


# The documented quantisation, restated here: bin i holds magnitudes in (m·γ^(i-1), m·γ^i] and
# stands for 2·m·γ^i/(γ+1).
ALPHA = 0.005
GAMMA = (1 + ALPHA) / (1 - ALPHA)


def quantised(x: float) -> float:
    i = math.ceil(math.log(x / 1e-9) / math.log(GAMMA))
    return 1e-9 * 2 * GAMMA**i / (GAMMA + 1)


def test_past_the_cap_ks_and_psi_are_exact_on_quantised_values() -> None:
    accumulator = DriftAccumulator(
        _Settings({"numeric": ["latency_ms"], "categorical": []}), cap=200
    )
    for page in pages_of(REFERENCE, 128):
        accumulator.add_reference(page)
    for page in pages_of(CURRENT, 128):
        accumulator.add(page)
    outcome = accumulator.finish()
    ref = [quantised(x) for x in REF_LATENCY]
    cur = [quantised(x) for x in CUR_LATENCY]
    assert outcome.details["quantised"] == ["latency_ms"]
    assert outcome.values["ks.latency_ms"] == pytest.approx(ks_by_hand(ref, cur), abs=1e-12)
    assert outcome.values["psi.latency_ms"] == pytest.approx(psi_by_hand(ref, cur), rel=1e-9)
    # And the quantised KS stays close to the raw one (bounded by the largest bin's mass).
    assert abs(outcome.values["ks.latency_ms"] - ks_by_hand(REF_LATENCY, CUR_LATENCY)) < 0.02


def test_too_few_samples_give_none_with_a_reason() -> None:
    outcome = evaluate(DriftMetric(), [CURRENT[:10]], reference=[REFERENCE])
    assert outcome.status == "insufficient_data"
    assert outcome.values["psi.latency_ms"] is None
    assert outcome.values["js.status"] is None
    assert "fewer than 30" in outcome.details["insufficient"]["latency_ms"]
    assert "latency_ms" in outcome.reason


def test_empty_reference_or_window_is_insufficient_data() -> None:
    no_reference = evaluate(DriftMetric(), [CURRENT])
    assert no_reference.status == "insufficient_data"
    assert "reference" in no_reference.reason
    assert no_reference.values["ks.latency_ms"] is None
    nothing = evaluate(DriftMetric(), [], reference=[REFERENCE])
    assert nothing.status == "insufficient_data"
    assert nothing.sample_size == 0


def test_signals_with_enough_data_are_computed_beside_those_without() -> None:
    outcome = evaluate(DriftMetric(), [CURRENT], {"min_samples": 400}, reference=[REFERENCE])
    assert outcome.status == "ok"
    assert outcome.values["ks.latency_ms"] is not None
    assert outcome.values["ks.tokens_total"] is None  # 300 and 250 values
    assert "tokens_total" in outcome.details["insufficient"]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"numeric": ["latency"]}, "numeric"),
        ({"categorical": ["colour"]}, "categorical"),
        ({"metadata": "channel"}, "metadata"),
        ({"bins": 1}, "bins"),
        ({"min_samples": 0}, "min_samples"),
        ({"baseline": "pinned"}, "baseline"),
    ],
)
def test_bad_params_are_rejected_naming_the_parameter(params: dict, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        DriftMetric().validate_params(params)
