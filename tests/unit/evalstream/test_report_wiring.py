from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer

from coldpath.config import QUALITY_POLICY
from coldpath.exceptions import PolicyConfigError
from evalstream.cli.report import app_ids, time_range
from evalstream.settings import Settings, SettingsError
from evalstream.wiring.report import breach_log, build_report, price_table
from report import PriceTable, ReportRequest, TokenPrice
from report.sqlite_breaches import SqliteBreachLog
from schemas import EvaluationPolicy, MetricOverride, MetricSpec

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def with_policies(*policies: EvaluationPolicy) -> Settings:
    settings = Settings()
    return settings.model_copy(
        update={"coldpath": settings.coldpath.model_copy(update={"policies": policies})}
    )


def test_prices_come_from_the_usage_metric_with_the_apps_overrides() -> None:
    prices = {"prices": {"gpt": {"input_per_1k": 1.0, "output_per_1k": 2.0}}}
    policy = EvaluationPolicy(
        name="costs",
        metrics=(MetricSpec(metric="usage", params=prices),),
        overrides={
            "cheap": {
                "usage": MetricOverride(
                    params={"default": {"input_per_1k": 0.1, "output_per_1k": 0.1}}
                )
            }
        },
    )
    policies = (QUALITY_POLICY, policy)
    gpt = TokenPrice(1.0, 2.0)
    assert price_table(policies, "any") == PriceTable({"gpt": gpt})
    assert price_table(policies, "cheap") == PriceTable({"gpt": gpt}, TokenPrice(0.1, 0.1))
    # The default policy's usage metric has no prices: tokens only.
    assert price_table((QUALITY_POLICY,), "any") is None


def test_a_wrong_price_table_names_the_policy() -> None:
    bad = EvaluationPolicy(
        name="bad", metrics=(MetricSpec(metric="usage", params={"prices": {"m": {}}}),)
    )
    with pytest.raises(SettingsError, match=r"coldpath.policies\[0\] usage params"):
        price_table((bad,), "any")


def test_the_report_refuses_policies_the_catalogue_refuses_before_reading(tmp_path: Path) -> None:
    # Before, the report (and the processor's live /report) priced tokens from a policy the
    # cold path refuses to run, and said nothing.
    prices = {"prices": {"gpt": {"input_per_1k": 1.0, "output_per_1k": 2.0}}}
    typo = EvaluationPolicy(
        name="costs",
        metrics=(MetricSpec(metric="usage", params=prices), MetricSpec(metric="latenzy")),
    )
    settings = with_policies(typo)
    embedded = settings.embedded.model_copy(update={"data_dir": tmp_path})
    settings = settings.model_copy(update={"embedded": embedded})
    request = ReportRequest(start=NOW - timedelta(hours=1), end=NOW)
    with pytest.raises(
        PolicyConfigError, match=r"^coldpath\.policies\[0\]\.metrics\[1\]\.metric: unknown"
    ):
        asyncio.run(build_report(settings, request))
    assert list(tmp_path.iterdir()) == []  # no store opened


def test_the_embedded_backend_has_a_breach_log_azure_has_none(tmp_path: Path) -> None:
    settings = Settings()
    embedded = settings.embedded.model_copy(update={"data_dir": tmp_path})
    log = breach_log(settings.model_copy(update={"embedded": embedded}))
    assert isinstance(log, SqliteBreachLog) and log.path == tmp_path / "alerts.db"
    assert breach_log(settings.model_copy(update={"backend": "azure"})) is None


def test_the_range_defaults_to_the_last_day_and_takes_durations() -> None:
    assert time_range(None, None, NOW) == (NOW - timedelta(hours=24), NOW)
    assert time_range("90m", "2026-03-01T10:00:00Z", NOW) == (
        datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
        datetime(2026, 3, 1, 10, 0, tzinfo=UTC),
    )
    assert time_range("2026-03-01", None, NOW)[0] == datetime(2026, 3, 1, tzinfo=UTC)
    with pytest.raises(typer.BadParameter, match="not before"):
        time_range("2026-03-02", None, NOW)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("99999999999999999999d", None, "too long ago"),
        ("1" * 400 + "s", None, "too long ago"),
        ("1000000d", None, "too long ago"),
        (None, "0001-01-01T00:00:00Z", "too long ago"),
        ("0001-01-01T00:00:00+14:00", None, "outside the years 1-9999 in UTC"),
        ("1h", "9999-12-31T23:59:59-14:00", "outside the years 1-9999 in UTC"),
    ],
)
def test_a_range_beyond_the_calendar_is_the_options_error_not_a_traceback(
    start: str | None, end: str | None, message: str
) -> None:
    # GET /report?from=99999999999999999999d was a 500 with an OverflowError in the log.
    with pytest.raises(typer.BadParameter, match=message):
        time_range(start, end, NOW)


@pytest.mark.parametrize("app", ["", "two words", "a" * 129])
def test_an_app_that_cannot_be_an_app_id_is_the_options_error(app: str) -> None:
    # --app "" (and GET /report?app=) was reported as an app: ': no telemetry in the range'.
    with pytest.raises(typer.BadParameter, match="is not an app id"):
        app_ids(["app-001", app])


def test_app_ids_pass_as_given() -> None:
    assert app_ids(["app-001", "a" * 128]) == ("app-001", "a" * 128)
    assert app_ids(None) == ()
