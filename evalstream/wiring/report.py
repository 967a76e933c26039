"""Builds what ``evalstream report`` reads from the settings: the stores, the breach log of the
backend and the price table; the report room itself never sees the settings."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from coldpath.policies.usage import parse_prices
from coldpath.windows import parse_moment
from evalstream import wiring
from evalstream.settings import Settings, SettingsError
from report import BreachLog, PriceTable, ReportData, ReportRequest, TokenPrice, gather
from schemas import EvaluationPolicy
from schemas.telemetry import APP_ID_PATTERN, is_app_id
from store.ports import EvaluationStore, TelemetryStore

USAGE_METRIC = "usage"


def price_table(policies: Sequence[EvaluationPolicy], app_id: str) -> PriceTable | None:
    """The prices of the first policy whose ``usage`` metric has any for this app (with the
    app's overrides), so the report's cost is the cold path's; None when no policy has any.
    ``policies``: as ``wiring.policies`` gives them, checked against the catalogue."""
    for index, policy in enumerate(policies):
        if not policy.applies_to(app_id):
            continue
        for spec in policy.metrics_for(app_id):
            if spec.metric != USAGE_METRIC:
                continue
            try:
                prices, default = parse_prices(spec.params)
            except ValueError as exc:
                raise SettingsError(f"coldpath.policies[{index}] usage params: {exc}") from exc
            if prices or default is not None:
                return PriceTable(
                    prices={
                        model: TokenPrice(p.input_per_1k, p.output_per_1k)
                        for model, p in prices.items()
                    },
                    default=(
                        TokenPrice(default.input_per_1k, default.output_per_1k)
                        if default is not None
                        else None
                    ),
                )
    return None


def breach_log(settings: Settings) -> BreachLog | None:
    """The embedded topic's file; None on Azure, where subscribers take breaches off the topic
    and there is no history to read."""
    if settings.backend != "embedded":
        return None
    from report.sqlite_breaches import SqliteBreachLog

    return SqliteBreachLog(settings.embedded.alerts_path)


@dataclass(frozen=True)
class ReportSources:
    telemetry: TelemetryStore
    evaluations: EvaluationStore
    breaches: BreachLog | None


@asynccontextmanager
async def report_sources(settings: Settings) -> AsyncIterator[ReportSources]:
    async with AsyncExitStack() as stack:
        # Reading only: a report changes nothing in the data dir.
        telemetry = await stack.enter_async_context(wiring.store(settings, read_only=True))
        evaluations = await stack.enter_async_context(
            wiring.evaluation_store(settings, read_only=True)
        )
        log = breach_log(settings)
        breaches = await stack.enter_async_context(log) if log is not None else None
        yield ReportSources(telemetry, evaluations, breaches)


async def build_report(settings: Settings, request: ReportRequest) -> ReportData:
    """The report's data; policies the catalogue refuses raise ``PolicyConfigError`` before
    anything is read (their prices are not the cold path's: it refuses to run them)."""
    policies = wiring.policies(settings)
    async with report_sources(settings) as sources:
        return await gather(
            request,
            telemetry=sources.telemetry,
            evaluations=sources.evaluations,
            breaches=sources.breaches,
            apps=settings.apps,
            prices=lambda app_id: price_table(policies, app_id),
        )


DEFAULT_SPAN = timedelta(hours=24)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


class RangeError(ValueError):
    """A report's ``from``/``to`` or ``app`` cannot be read; ``field`` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def report_apps(values: Sequence[str]) -> tuple[str, ...]:
    """``app`` values, each an app id: an empty ``?app=`` (or ``--app ""``) was reported as an
    app with no telemetry, headed ': no telemetry in the range'."""
    for value in values:
        if not is_app_id(value):
            raise RangeError("app", f"{value!r} is not an app id ({APP_ID_PATTERN})")
    return tuple(values)


def report_range(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``to`` (default now) and ``from``: an ISO-8601 moment or a duration before ``to``
    (``90m``, ``6h``, ``2d``; default 24 h)."""
    stop = _moment(end, "to") if end else now
    if start is None:
        return _back(stop, DEFAULT_SPAN.total_seconds(), "24h"), stop
    duration = _DURATION.match(start.strip())
    if duration:
        first = _back(stop, float(duration[1]) * _UNITS[duration[2]], start)
    else:
        first = _moment(start, "from")
    if first >= stop:
        raise RangeError("from", f"{start} is not before to {stop.isoformat()}")
    return first, stop


def _back(stop: datetime, seconds: float, given: str) -> datetime:
    try:
        return stop - timedelta(seconds=seconds)
    except OverflowError:
        raise RangeError("from", f"{given} before {stop.isoformat()} is too long ago") from None


def _moment(text: str, field: str) -> datetime:
    try:
        return parse_moment(text)
    except ValueError as exc:
        raise RangeError(field, str(exc)) from exc
