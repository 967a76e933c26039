from __future__ import annotations

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
