"""Burn-rate rules fire at the windows they document, in event time."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.appconfig import AppConfig
from schemas.breach import BreachKind, Severity
from schemas.detection import BurnRateRule
from stream.hotpath.burn_rate import BurnRate
from stream.hotpath.factory import ERROR, detectors_for
from stream.hotpath.packing import pack_varints, unpack_varints

from .streams import T0

FAST = BurnRateRule(long_window_s=3600, short_window_s=300, factor=14.4, severity="critical")
SLOW = BurnRateRule(long_window_s=6 * 3600, short_window_s=1800, factor=6.0, severity="critical")
TICKET = BurnRateRule(
    long_window_s=3 * 86400, short_window_s=6 * 3600, factor=1.0, severity="warning"
)


def errors(rules: tuple[BurnRateRule, ...], **options: int) -> BurnRate:
    return BurnRate(
        rules,
        budget=0.01,
        bad_above=0.5,
        kind=BreachKind.ERROR_RATE,
        severity=Severity(rules[0].severity),
        **options,
    )


def first_alarm(detector: BurnRate, flags: list[float], step: float = 1.0) -> int | None:
    for i, x in enumerate(flags):
        if detector.update(x, T0 + step * i).alarm:
            return i
    return None


# Two clean hours at one request per second, then every request fails.
OUTAGE = [0.0] * 7200 + [1.0] * 3000


def test_fast_rule_fires_when_the_hour_has_burnt_14_4_times_the_budget() -> None:
    # Worked by hand: at 7200 + k the 1 h ring (12 buckets of 300 s) covers 4200 s..now, so
    # it holds 3001 + k requests and k + 1 failures; 14.4 % of them fail first at k = 504
    # (an exact sliding hour would need k = 519: the ring's window is up to 300 s shorter).
    assert first_alarm(errors((FAST,)), OUTAGE) == 7200 + 504


def test_slow_rule_fires_when_six_hours_burnt_6_times_the_budget() -> None:
    # Only two hours of history: the 6 h window holds all 7201 + k requests; 6 % fail first
    # at k = 459.
    assert first_alarm(errors((SLOW,)), OUTAGE) == 7200 + 459


def test_both_rules_fire_as_one_detector_named_by_the_first_window() -> None:
    detector = errors((FAST, SLOW))
    at = first_alarm(detector, OUTAGE)
    assert at == 7200 + 459
    # Window identity: the end of the current 25 s bucket, minus the long window.
    end = T0 + (at // 25 + 1) * 25
    start = datetime.fromtimestamp(end - 21600, UTC)
    assert detector.window_id == f"21600s/1800s@{start.isoformat()}"
    assert detector.window_start == end - 21600
    assert detector.limit == 6.0
    assert detector.observed == pytest.approx(460 / 7660 / 0.01)


def test_ticket_rule_is_one_times_the_budget() -> None:
    # 1 % of all 7201 + k requests fail first at k = 72 (judged without waiting for a full
    # 6 h short window: see the next test).
    assert first_alarm(errors((TICKET,), full_windows=False), OUTAGE) == 7200 + 72


def test_rules_wait_until_their_short_window_is_covered() -> None:
    # 2 % failures from the first request: 2× the budget, but a fresh app's "3 day" window
    # holds minutes. The ticket rule fires once 6 h of event time have been seen (at the
    # 6 h mark the warning detector's 30 min bucket closes and rules are evaluated).
    flags = [1.0 if i % 50 == 0 else 0.0 for i in range(8 * 3600)]
    assert first_alarm(errors((TICKET,)), flags) == 6 * 3600
    # An outage from the first request: the 1 h / 5 min rule waits for 5 min of history.
    assert first_alarm(errors((FAST,)), [1.0] * 1000) == 300


def test_no_alarm_while_warming_up() -> None:
    detector = errors((FAST,), warmup=200, full_windows=False)
    assert first_alarm(detector, [1.0] * 500) == 199


def test_short_window_needs_enough_requests_unless_the_long_window_holds_them() -> None:
    # One request every 30 s: the 5 min window holds 10 (fewer than 20), the 1 h window 120.
    # With the strict count rule (low-rate floor = the minimum) a failing, nearly idle app
    # does not page; with the default floor of 3 it pages once the hour burns 14.4×: at
    # 400 + k (k < 20) the 1 h ring holds k + 101 requests (k ≥ 10) and k + 1 failures,
    # 14.4 % first at k = 16.
    flags = [0.0] * 400 + [1.0] * 400
    strict = errors((FAST,), warmup=10, low_rate_min_events=20)
    assert first_alarm(strict, flags, step=30.0) is None
    assert first_alarm(errors((FAST,), warmup=10), flags, step=30.0) == 400 + 16
    lenient = errors((FAST,), warmup=10, min_window_events=5)
    assert first_alarm(lenient, flags, step=30.0) == 400 + 16


def test_a_quiet_hour_never_pages() -> None:
    # One request every 10 min, every one failing: the 1 h window holds 6 requests (fewer
    # than 20), so the low-rate floor does not apply to the fast rule and nothing pages on so
    # little. The 6 h / 30 min rule pages once its 6 h window holds 20 requests (3 in its
    # short window): at the 20th failing request.
    assert first_alarm(errors((FAST,), warmup=10), [1.0] * 400, step=600.0) is None
    assert first_alarm(errors((FAST, SLOW), warmup=10), [1.0] * 400, step=600.0) == 19


def default_error_detectors() -> list[BurnRate]:
    """The error-rate detectors an app with the default configuration gets."""
    built = detectors_for(AppConfig(), ERROR)
    assert all(isinstance(d, BurnRate) for d in built)
    return [d for d in built if isinstance(d, BurnRate)]


def test_full_outage_of_an_app_at_one_request_a_minute_pages_within_10_minutes() -> None:
    # Five healthy hours at one request a minute (past the 200-event warm-up), then every
    # request fails. Worked by hand: failure k (k = 0, 1, …) arrives k minutes in; the 1 h
    # ring (12 buckets of 5 min, so 55-60 min long) holds 56-60 requests, and 14.4 % of them
    # fail first at the 9th failure, 8 minutes after the outage began. Without the low-rate
    # floor the 5 min window (5 requests) never holds 20 and the 6 h / 30 min rule pages
    # 19 minutes in (6 % of the 300 + k requests of its 6 h window).
    healthy, failing = [0.0] * 300, [1.0] * 60
    critical, warning = default_error_detectors()
    assert critical.severity is Severity.CRITICAL
    at = first_alarm(critical, healthy + failing, step=60.0)
    assert at is not None
    minutes_into_outage = at - len(healthy)
    assert minutes_into_outage == 8
    assert critical.limit == 14.4
    strict = errors(critical.rules, low_rate_min_events=20)
    assert first_alarm(strict, healthy + failing, step=60.0) == len(healthy) + 19
    # The ticket rule needs 6 h of history: none here.
    assert first_alarm(warning, healthy + failing, step=60.0) is None


def test_low_rate_app_on_budget_does_not_page() -> None:
    # One request a minute for a week at exactly the budget's 1 % failures, 20 seeds: the
    # thin short window never pages (failures come one at a time; the hour would need 9).
    for seed in range(20):
        rng = random.Random(seed)
        flags = [1.0 if rng.random() < 0.01 else 0.0 for _ in range(7 * 1440)]
        critical, _ = default_error_detectors()
        assert first_alarm(critical, flags, step=60.0) is None, seed


def test_stable_error_rate_under_budget_stays_quiet() -> None:
    flags = [1.0 if i % 200 == 0 else 0.0 for i in range(40_000)]  # 0.5 %, budget 1 %
    assert first_alarm(errors((FAST, SLOW)), flags) is None
    assert first_alarm(errors((TICKET,)), flags) is None


def test_alarm_clears_when_the_short_window_recovers() -> None:
    detector = errors((FAST,))
    flags = [0.0] * 7200 + [1.0] * 1200 + [0.0] * 1200
    states = [detector.update(x, T0 + i).alarm for i, x in enumerate(flags)]
    first_on = states.index(True)
    last_on = len(states) - 1 - states[::-1].index(True)
    assert first_on == 7704
    # Once no request fails the rule is re-evaluated at each 25 s bucket. At 8649 the 5 min
    # ring starts at 8350: 50 failures of 300 (16.7 %); at 8650 it starts at 8375: 25 of 276.
    assert last_on == 8649
    assert not any(states[last_on + 1 :])


def test_late_events_count_in_windows_that_still_hold_them() -> None:
    detector = errors((FAST,), warmup=1, min_window_events=1)
    for i in range(600):
        detector.update(0.0, T0 + i)
    # A failure from 100 s ago still belongs to the 5 min and the 1 h window; one from 2 h
    # ago belongs to neither (each ring counts an event once).
    detector.update(1.0, T0 + 500)
    detector.update(1.0, T0 + 599 - 7200)
    totals, bads = rings(detector)
    assert [sum(ring) for ring in bads] == [1, 1]
    assert sum(totals[0]) < 600
    assert detector.offending


def rings(detector: BurnRate) -> tuple[list[list[int]], list[list[int]]]:
    """The ring counts as the snapshot holds them (totals per ring, bad counts per ring)."""
    counts = unpack_varints(detector.state()[0])
    k = detector.buckets
    rows = [counts[i : i + k] for i in range(0, len(counts), k)]
    return rows[: len(rows) // 2], rows[len(rows) // 2 :]


@pytest.mark.parametrize("values", [[], [0], [127, 128, 300, 16_384, 2**40]])
def test_varints_round_trip(values: list[int]) -> None:
    assert unpack_varints(pack_varints(values)) == values


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=0, max_value=400), min_size=1, max_size=300),
    bad=st.lists(st.booleans(), min_size=300, max_size=300),
)
def test_ring_counts_match_a_brute_force_count(gaps: list[int], bad: list[bool]) -> None:
    # After any in-order sequence (gaps in seconds, bursts and silences), each ring plus the
    # pending bucket holds exactly the events whose bucket lies within the ring's last
    # ``buckets`` buckets.
    detector = errors((FAST, SLOW))
    times: list[float] = []
    t = T0
    for gap, failed in zip(gaps, bad, strict=False):
        t += gap
        times.append(t)
        detector.update(1.0 if failed else 0.0, t)
    state = detector.state()
    totals, bads = rings(detector)
    pending_total, pending_bad = state[2][6], state[2][7]
    for ring, window in enumerate((300, 1800, 3600, 21600)):
        width = window / 12
        newest = int(times[-1] // width)
        inside = [i for i, when in enumerate(times) if int(when // width) > newest - 12]
        assert sum(totals[ring]) + pending_total == len(inside)
        assert sum(bads[ring]) + pending_bad == sum(bad[i] for i in inside)
