from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from coldpath.config import (
    DEMO_POLICY,
    QUALITY_POLICY,
    ColdpathSettings,
    check_policies,
    load_catalogue,
    setting_path,
)
from coldpath.exceptions import PolicyConfigError
from coldpath.policies.catalogue import CATALOGUE as BUILT_IN_CATALOGUE
from schemas import EvaluationPolicy, Thresholds
from tests.unit.coldpath.fakes import CATALOGUE


def policies(*raw: dict[str, object]) -> tuple[EvaluationPolicy, ...]:
    return ColdpathSettings.model_validate({"policies": list(raw)}).policies


def test_unknown_metric_names_the_setting() -> None:
    configured = policies({"name": "q", "metrics": [{"metric": "latency"}, {"metric": "latencyy"}]})
    with pytest.raises(PolicyConfigError) as caught:
        check_policies(configured, CATALOGUE)
    assert str(caught.value).startswith("coldpath.policies[0].metrics[1].metric: unknown metric")


def test_wrong_params_name_the_setting_also_in_overrides() -> None:
    configured = policies(
        {
            "name": "q",
            "metrics": [{"metric": "latency"}],
            "overrides": {"app-1": {"latency": {"params": {"bogus": 1}}}},
        }
    )
    with pytest.raises(PolicyConfigError, match=r"^coldpath.policies\[0\].overrides.app-1.latency"):
        check_policies(configured, CATALOGUE)


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ({"warning": {"min": 5, "max": 1}}, "inverted bound"),
        ({"warning": {"max": 10}, "critical": {"max": 5}}, "inverted bounds"),
        ({"warning": {"min": 1}, "critical": {"min": 2}}, "inverted bounds"),
    ],
)
def test_inverted_bounds_are_refused(thresholds: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Thresholds.model_validate(thresholds)


@pytest.mark.parametrize("window", ["PT7M", "P1DT1H", "PT0S", "-PT1H", "PT1.5S"])
def test_impossible_windows_are_refused(window: str) -> None:
    with pytest.raises(ValidationError) as caught:
        policies({"name": "q", "window": window, "metrics": [{"metric": "latency"}]})
    location = caught.value.errors()[0]["loc"]
    assert setting_path(("coldpath", *location)) == "coldpath.policies[0].window"


def test_per_app_overrides_merge_params_and_replace_thresholds() -> None:
    (policy,) = policies(
        {
            "name": "q",
            "metrics": [
                {
                    "metric": "latency",
                    "params": {"scale": 1, "other": 2},
                    "thresholds": {
                        "p95": {"warning": {"max": 100}},
                        "mean": {"warning": {"max": 50}},
                    },
                }
            ],
            "overrides": {
                "slow-app": {
                    "latency": {
                        "params": {"scale": 3},
                        "thresholds": {"p95": {"warning": {"max": 900}}},
                    }
                }
            },
        }
    )
    (default,) = policy.metrics_for("any-app")
    (slow,) = policy.metrics_for("slow-app")
    assert default.params == {"scale": 1, "other": 2}
    assert slow.params == {"scale": 3, "other": 2}
    assert slow.thresholds["p95"].warning is not None and slow.thresholds["p95"].warning.max == 900
    assert slow.thresholds["mean"] == default.thresholds["mean"]


@pytest.mark.parametrize(
    ("field", "length"), [("window", "P99999999D"), ("lateness", "P999999999D")]
)
def test_windows_and_lateness_beyond_the_calendar_are_refused(field: str, length: str) -> None:
    # The latest due window is now - lateness - window: beyond the year 1, every cold path
    # command (windows, trigger, backfill, status) ended in an OverflowError traceback.
    with pytest.raises(ValidationError, match="at most 36500 days") as caught:
        policies({"name": "q", field: length, "metrics": [{"metric": "latency"}]})
    location = caught.value.errors()[0]["loc"]
    assert setting_path(("coldpath", *location)) == f"coldpath.policies[0].{field}"
    policies({"name": "q", field: "P36500D", "metrics": [{"metric": "latency"}]})


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (
            {"apps": ["app-1", "bad app\x1b[2J"]},
            "coldpath.policies[0].apps: item 1, 'bad app\\x1b[2J', is not",
        ),
        ({"overrides": {"x" * 129: {"latency": {}}}}, "coldpath.policies[0].overrides.xxx"),
    ],
)
def test_app_ids_outside_the_app_id_pattern_are_refused(raw: dict[str, object], where: str) -> None:
    # No event can carry such an id: trigger staged a unit for it and ended in a pydantic
    # traceback (the unit refused it), and an override for it could never apply.
    with pytest.raises(ValidationError) as caught:
        policies({"name": "q", "metrics": [{"metric": "latency"}], **raw})
    error = caught.value.errors()[0]
    message = error["msg"].removeprefix("Value error, ")
    shown = f"{setting_path(('coldpath', *error['loc']))}: {message}"
    assert shown.startswith(where), shown


def test_overrides_of_metrics_not_in_the_policy_are_refused() -> None:
    with pytest.raises(ValidationError, match="not in this policy"):
        policies(
            {"name": "q", "metrics": [{"metric": "latency"}], "overrides": {"a": {"errors": {}}}}
        )


def test_duplicate_policy_names_are_refused() -> None:
    with pytest.raises(ValidationError, match="defined twice"):
        policies(
            {"name": "q", "metrics": [{"metric": "latency"}]},
            {"name": "q", "metrics": [{"metric": "errors"}]},
        )


def test_shipped_policies_are_valid_and_catalogue_reference_loads() -> None:
    assert QUALITY_POLICY.window.total_seconds() == 3600
    assert DEMO_POLICY.window.total_seconds() == 60
    assert load_catalogue("tests.unit.coldpath.fakes:CATALOGUE") is CATALOGUE
    with pytest.raises(PolicyConfigError, match=r"^coldpath\.catalogue"):
        load_catalogue("no.such.module:CATALOGUE")
    assert ColdpathSettings(workers=3).worker_count == 3


def test_a_catalogue_metric_lacking_a_protocol_method_is_refused_naming_it() -> None:
    # Before, the catalogue loaded and the policy check failed with
    # AttributeError: 'OutdatedLatencyMetric' object has no attribute 'value_names'.
    with pytest.raises(PolicyConfigError) as refused:
        load_catalogue("tests.unit.coldpath.fakes:OUTDATED_CATALOGUE")
    assert str(refused.value) == (
        "coldpath.catalogue: metric 'latency' of 'tests.unit.coldpath.fakes:OUTDATED_CATALOGUE' "
        "lacks value_names() (see the Metric protocol in coldpath.policies.base)"
    )


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ('raise ValueError("no prices file")\n', "ValueError: no prices file"),
        (
            'def CATALOGUE():\n    raise KeyError("latency")\n',
            "KeyError: 'latency'",
        ),
    ],
    ids=["module-raises", "factory-raises"],
)
def test_a_catalogue_that_fails_as_it_loads_is_one_setting_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str, said: str
) -> None:
    # Before, any error but ImportError and AttributeError came out of every command that
    # loads the catalogue as a traceback.
    module = f"failing_catalogue_{len(source)}"
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PolicyConfigError) as refused:
        load_catalogue(f"{module}:CATALOGUE")
    assert str(refused.value) == (
        f"coldpath.catalogue: '{module}:CATALOGUE' failed as it loaded: {said}"
    )


def builtin_check(metric: Mapping[str, object], **policy: object) -> None:
    """``metric`` in a policy named ``q``, checked against the shipped catalogue."""
    check_policies(policies({"name": "q", "metrics": [metric], **policy}), BUILT_IN_CATALOGUE)


def test_shipped_policies_judge_only_values_their_metrics_report() -> None:
    check_policies((QUALITY_POLICY, DEMO_POLICY), BUILT_IN_CATALOGUE)


@pytest.mark.parametrize(
    ("metric", "value", "known"),
    [
        ({"metric": "latency"}, "p959", "count, missing, mean, p50, p90, p95, p99, slo_attainment"),
        (
            {"metric": "errors", "params": {"types": ["timeout"]}},
            "rate.timout",
            "count, errors, rate, errors.timeout, rate.timeout; errors.<type> and rate.<type> "
            "need the type in params.types",
        ),
        (
            {"metric": "errors"},
            "rate.timeout",
            "count, errors, rate; errors.<type> and rate.<type> need the type in params.types",
        ),
        ({"metric": "usage"}, "tokens", "requests, with_tokens, without_tokens"),
        ({"metric": "scores"}, "toxicity.maen", "<score>.count, <score>.mean, <score>.p10"),
        (
            {"metric": "scores", "params": {"names": ["toxicity"]}},
            "toxicty.mean",
            "toxicity.count, toxicity.mean, toxicity.p10, toxicity.p50, toxicity.below; scores "
            "outside params.names are not summarised",
        ),
        ({"metric": "drift"}, "psi.latncy_ms", "psi.latency_ms, ks.latency_ms"),
        ({"metric": "drift", "params": {"numeric": ["latency_ms"]}}, "psi.score.toxicity", ""),
        ({"metric": "text.f1"}, "f1", "mean, count, skipped, failed"),
        ({"metric": "text.rouge"}, "rouge", "mean, precision_mean, recall_mean, count"),
        ({"metric": "text.relevance"}, "score", "mean, evaluated, failed, capped"),
    ],
)
def test_a_threshold_on_a_value_the_metric_never_reports_is_refused(
    metric: dict[str, object], value: str, known: str
) -> None:
    thresholds = {value: {"warning": {"max": 1.0}}}
    with pytest.raises(PolicyConfigError) as caught:
        builtin_check({**metric, "thresholds": thresholds})
    message = str(caught.value)
    assert message.startswith(
        f"coldpath.policies[0].metrics[0].thresholds: policy 'q', metric {metric['metric']!r} "
        f"has no value {value!r} to judge (its values: "
    ), message
    assert known in message and "\n" not in message


@pytest.mark.parametrize(
    ("metric", "value"),
    [
        ({"metric": "latency"}, "p99"),
        ({"metric": "errors", "params": {"types": ["timeout"]}}, "rate.timeout"),
        ({"metric": "errors", "params": {"types": ["timeout"]}}, "errors.timeout"),
        ({"metric": "scores"}, "any.score.below"),
        ({"metric": "scores", "params": {"names": ["toxicity"]}}, "toxicity.p10"),
        ({"metric": "drift"}, "ks.score.toxicity"),
        ({"metric": "drift", "params": {"metadata": ["locale"]}}, "js.metadata.locale"),
        ({"metric": "drift", "params": {"categorical": ["error_type"]}}, "js.error_type"),
        ({"metric": "usage"}, "cost_per_request"),
        ({"metric": "text.rouge"}, "recall_mean"),
        ({"metric": "text.groundedness"}, "mean"),
    ],
)
def test_a_threshold_on_a_value_the_metric_can_report_is_accepted(
    metric: dict[str, object], value: str
) -> None:
    builtin_check({**metric, "thresholds": {value: {"warning": {"max": 1.0}}}})


def test_a_misspelt_value_in_an_app_override_names_the_override() -> None:
    override = {"thresholds": {"p955": {"warning": {"max": 1.0}}}}
    with pytest.raises(PolicyConfigError) as caught:
        builtin_check({"metric": "latency"}, overrides={"app-1": {"latency": override}})
    assert str(caught.value).startswith(
        "coldpath.policies[0].overrides.app-1.latency.thresholds: policy 'q', metric 'latency' "
        "has no value 'p955' to judge"
    )


def test_override_params_that_leave_a_policy_threshold_nothing_to_judge_are_refused() -> None:
    # The policy judges rate.timeout; app-1's types no longer list timeout, so for app-1 that
    # threshold could never be judged.
    metric = {
        "metric": "errors",
        "params": {"types": ["timeout"]},
        "thresholds": {"rate.timeout": {"warning": {"max": 0.1}}},
    }
    builtin_check(metric)
    override = {"params": {"types": ["rate_limited"]}}
    with pytest.raises(PolicyConfigError) as caught:
        builtin_check(metric, overrides={"app-1": {"errors": override}})
    assert str(caught.value).startswith(
        "coldpath.policies[0].overrides.app-1.errors.params (for the thresholds of "
        "coldpath.policies[0].metrics[0]): policy 'q', metric 'errors' has no value "
        "'rate.timeout' to judge"
    )


def test_a_manifest_s_policies_are_named_by_where_they_come_from() -> None:
    configured = policies(
        {
            "name": "q",
            "metrics": [
                {
                    "metric": "latency",
                    "thresholds": {
                        "mean": {"warning": {"max": 1.0}},
                        "p959": {"warning": {"max": 1.0}},
                    },
                }
            ],
        }
    )
    with pytest.raises(PolicyConfigError, match=r"^manifest m1 policies\[0\]\.metrics\[0\]"):
        check_policies(configured, CATALOGUE, "manifest m1 policies")
