from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from coldpath.windows import (
    align,
    due_between,
    is_due,
    last_due,
    parse_moment,
    parse_window,
    reference_window,
    window_at,
    windows_between,
)
from schemas import EvaluationPolicy, MetricSpec, Window


def policy(window: str, lateness: str = "PT5M") -> EvaluationPolicy:
    return EvaluationPolicy(
        name="p", window=window, lateness=lateness, metrics=(MetricSpec(metric="latency"),)
    )


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_windows_are_utc_aligned_half_open() -> None:
    hourly = policy("PT1H")
    window = window_at(hourly, at("2026-03-01T10:59:59.999"))
    assert (window.start, window.end) == (at("2026-03-01T10:00"), at("2026-03-01T11:00"))
    assert window_at(hourly, at("2026-03-01T11:00")).start == at("2026-03-01T11:00")
    offset = datetime(2026, 3, 1, 12, 30, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=5, minutes=30))
    )
    assert window_at(hourly, offset).start == at("2026-03-01T12:00")
    assert align(at("2026-03-01T23:59"), timedelta(days=1)) == at("2026-03-01T00:00")


def test_due_once_end_plus_lateness_has_passed() -> None:
    hourly = policy("PT1H", "PT10M")
    window = Window(start=at("2026-03-01T10:00"), end=at("2026-03-01T11:00"))
    assert not is_due(hourly, window, at("2026-03-01T11:09:59"))
    assert is_due(hourly, window, at("2026-03-01T11:10"))
    assert last_due(hourly, at("2026-03-01T11:10")) == window
    assert last_due(hourly, at("2026-03-01T11:09")).start == at("2026-03-01T09:00")


def test_windows_between_lists_every_overlapping_window() -> None:
    quarter = policy("PT15M", "PT0S")
    windows = list(windows_between(quarter, at("2026-03-01T10:05"), at("2026-03-01T11:00")))
    assert [w.start.strftime("%H:%M") for w in windows] == ["10:00", "10:15", "10:30", "10:45"]
    due = list(
        due_between(quarter, at("2026-03-01T10:00"), at("2026-03-01T12:00"), at("2026-03-01T10:40"))
    )
    assert [w.end.strftime("%H:%M") for w in due] == ["10:15", "10:30"]


def test_daily_and_reference_windows() -> None:
    daily = policy("P1D")
    window = window_at(daily, at("2026-03-01T17:00"))
    assert (window.start, window.end) == (at("2026-03-01T00:00"), at("2026-03-02T00:00"))
    assert reference_window(daily, window) == Window(
        start=at("2026-02-28T00:00"), end=at("2026-03-01T00:00")
    )


def test_parse_window_and_naive_times() -> None:
    assert parse_window("2026-03-01T10:00Z/2026-03-01T11:00Z").end == at("2026-03-01T11:00")
    with pytest.raises(ValueError, match="START/END"):
        parse_window("2026-03-01T10:00Z")
    with pytest.raises(ValueError, match="naive"):
        window_at(policy("PT1H"), datetime(2026, 3, 1, 10))


def test_times_at_the_ends_of_the_calendar() -> None:
    # Year 1 at +14:00 is in the year 0 in UTC, the end of the year 9999 at -12:00 in 10000:
    # windows, backfill and trigger ended in an OverflowError traceback.
    with pytest.raises(ValueError, match="outside the years 1-9999 in UTC"):
        parse_moment("0001-01-01T00:00+14:00")
    with pytest.raises(ValueError, match="outside the years 1-9999 in UTC"):
        parse_window("9999-12-31T00:00Z/9999-12-31T23:00-12:00")
    # Only the windows the calendar holds whole: the last day's would end in the year 10000,
    # the first week's (weeks run from the epoch, a Thursday) would start before the year 1.
    daily, weekly = policy("P1D"), policy("P7D")
    end = list(windows_between(daily, at("9999-12-30T00:00"), at("9999-12-31T23:59")))
    assert [w.start for w in end] == [at("9999-12-30T00:00")]
    start = list(windows_between(weekly, parse_moment("0001-01-01"), parse_moment("0001-01-15")))
    assert [w.start for w in start] == [at("0001-01-04T00:00"), at("0001-01-11T00:00")]
    last = Window(start=at("9999-12-31T22:00"), end=at("9999-12-31T23:00"))
    assert not is_due(policy("PT1H", "PT2H"), last, at("2026-03-01T00:00"))
