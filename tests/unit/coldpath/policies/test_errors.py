"""errors: overall and per-type rates counted by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from coldpath.policies.errors import ErrorsMetric
from schemas import TelemetryDocument
from tests.unit.coldpath.policies.support import evaluate, make_doc, pages_of

TYPES = [None] * 80 + ["timeout"] * 12 + ["rate_limited"] * 5 + ["unspecified-bug"] * 1
# Status error without an error_type: counted as "unspecified".
UNTYPED_ERRORS = 2


def _window() -> list[TelemetryDocument]:
    docs = [make_doc(i, error_type=kind) for i, kind in enumerate(TYPES)]
    docs += [make_doc(1000 + i, error=True) for i in range(UNTYPED_ERRORS)]
    return docs


def test_rates_overall_and_by_type() -> None:
    outcome = evaluate(ErrorsMetric(), pages_of(_window(), 7))
    n = len(TYPES) + UNTYPED_ERRORS
    by_type = Counter(kind for kind in TYPES if kind is not None)
    by_type["unspecified"] += UNTYPED_ERRORS
    errors = sum(by_type.values())

    assert outcome.status == "ok"
    assert outcome.sample_size == n == 100
    assert outcome.values["count"] == n
    assert outcome.values["errors"] == errors == 20
    assert outcome.values["rate"] == errors / n
    for kind, count in by_type.items():
        assert outcome.values[f"errors.{kind}"] == count
        assert outcome.values[f"rate.{kind}"] == count / n
    assert outcome.values["rate.timeout"] == 0.12


def test_no_error_is_a_zero_rate_and_no_document_is_insufficient() -> None:
    clean = evaluate(ErrorsMetric(), [[make_doc(i) for i in range(5)]])
    assert clean.values["rate"] == 0.0
    assert clean.status == "ok"
    empty = evaluate(ErrorsMetric(), [[]])
    assert empty.status == "insufficient_data"
    assert empty.values["rate"] is None


def test_error_types_beyond_the_cap_are_pooled() -> None:
    docs = [make_doc(i, error_type=f"kind-{i:03d}") for i in range(60)]
    outcome = evaluate(ErrorsMetric(), [docs])
    assert outcome.values["errors._other"] == 10
    assert outcome.values["errors"] == 60
    assert outcome.details["types_capped"] is True


def test_unknown_params_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="window"):
        ErrorsMetric().validate_params({"window": 3})


def test_a_declared_type_that_did_not_occur_is_a_zero_rate() -> None:
    clean = evaluate(ErrorsMetric(), [[make_doc(i) for i in range(5)]], {"types": ["timeout"]})
    assert clean.status == "ok"
    assert clean.values["errors.timeout"] == 0 and clean.values["rate.timeout"] == 0.0


def test_a_declared_type_keeps_its_own_count_past_the_cap() -> None:
    # 60 other types first: without the declaration, timeout would be pooled as _other.
    docs = [make_doc(i, error_type=f"kind-{i:03d}") for i in range(60)]
    docs += [make_doc(100 + i, error_type="timeout") for i in range(3)]
    outcome = evaluate(ErrorsMetric(), pages_of(docs, 9), {"types": ["timeout"]})
    assert outcome.values["errors.timeout"] == 3
    assert outcome.values["rate.timeout"] == 3 / 63
    assert outcome.values["errors._other"] == 10
    assert outcome.details["types_capped"] is True


@pytest.mark.parametrize("types", ["timeout", [""], [1], {"timeout": 1}])
def test_types_must_be_a_list_of_names(types: object) -> None:
    with pytest.raises(ValueError, match=r"^types: "):
        ErrorsMetric().validate_params({"types": types})
