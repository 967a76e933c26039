"""Every built-in metric gives the same answer whatever the page sizes (and the sketch keeps its
relative-error promise for any sign of value)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from coldpath.policies.catalogue import BUILT_IN
from coldpath.policies.sketch import RELATIVE_ACCURACY, Sample, quantise
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

PARAMS = {
    "usage": {"prices": {"a": {"input_per_1k": 0.5, "output_per_1k": 1.5}}},
    "drift": {"min_samples": 1, "metadata": ["slice"]},
}

row = st.fixed_dictionaries(
    {
        "latency_ms": st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
        "error_type": st.sampled_from([None, None, "timeout", "5xx"]),
        "tokens": st.one_of(st.none(), st.tuples(st.integers(0, 5000), st.integers(0, 5000))),
        "model_id": st.sampled_from([None, "a", "b"]),
        "scores": st.dictionaries(st.sampled_from(["s1", "s2"]), st.floats(-1, 1, allow_nan=False)),
        "metadata": st.dictionaries(st.just("slice"), st.sampled_from(["x", "y", 3, True])),
    }
)


def _close(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@settings(max_examples=40, deadline=None)
@given(
    st.lists(row, min_size=0, max_size=60),
    st.lists(row, min_size=0, max_size=40),
    st.integers(1, 17),
)
def test_pages_of_any_size_give_the_same_outcome(rows, reference_rows, page_size) -> None:
    docs = [make_doc(i, **r) for i, r in enumerate(rows)]
    reference = [make_doc(1000 + i, **r) for i, r in enumerate(reference_rows)]
    for metric in BUILT_IN:
        params = PARAMS.get(metric.name, {})
        whole = evaluate(metric, [docs], params, reference=[reference])
        paged = evaluate(
            metric, pages_of(docs, page_size), params, reference=pages_of(reference, 5)
        )
        assert whole.status == paged.status, metric.name
        assert whole.sample_size == paged.sample_size, metric.name
        assert whole.values.keys() == paged.values.keys(), metric.name
        for name, value in whole.values.items():
            assert _close(value, paged.values[name]), (metric.name, name, value, paged.values[name])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e12, 1e12, allow_nan=False), min_size=1, max_size=300), st.integers(1, 50)
)
def test_sketch_quantises_within_the_relative_bound_and_ignores_paging(values, cap) -> None:
    array = np.asarray(values, dtype=np.float64)
    q = quantise(array)
    assert np.all(np.abs(q - array) <= RELATIVE_ACCURACY * np.abs(array) * (1 + 1e-9) + 1e-9)
    one, many = Sample(cap), Sample(cap)
    one.add(array)
    for start in range(0, len(array), 7):
        many.add(array[start : start + 7])
    for a, b in ((one, many),):
        assert a.count == b.count == len(values)
        da, db = a.distribution(), b.distribution()
        assert np.array_equal(da.values, db.values)
        assert np.array_equal(da.cumulative, db.cumulative)
