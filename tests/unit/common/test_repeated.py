"""A failure retried for as long as it lasts is said once, recalled with its count at most
every repeat_s, and its end said once (common.repeated)."""

from __future__ import annotations

import logging

import pytest

from common.repeated import RepeatedFailure
from store.exceptions import StoreUnavailable

FULL = StoreUnavailable("write telemetry: SQLite: database or disk is full", retryable=True)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def said(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, bool]]:
    return [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records]


def test_a_lasting_failure_is_one_line_then_a_reminder_per_period_then_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = Clock()
    failures = RepeatedFailure("batches", logging.getLogger("t"), repeat_s=60, clock=clock)
    # Eight partitions failing every 0.125 s for 90 s.
    for _ in range(720):
        for partition in range(8):
            failures.failed(f"partition {partition}", FULL, 0.125)
        clock.now += 0.125
    for partition in range(8):
        failures.succeeded(f"partition {partition}")
    assert said(caplog) == [
        (
            logging.ERROR,
            "batches failing: write telemetry: SQLite: database or disk is full (partition 0);"
            " retrying until they succeed (next in 0.1 s), nothing is lost",
            False,
        ),
        (
            logging.WARNING,
            "batches still failing: write telemetry: SQLite: database or disk is full (3840 more"
            " failures in 60 s, 8 failing now); retrying (next in 0.1 s)",
            False,
        ),
        (logging.WARNING, "batches succeed again, after 5760 failures over 90 s", False),
    ]


def test_a_failure_that_is_not_a_passing_one_keeps_its_traceback_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    failures = RepeatedFailure("batches", logging.getLogger("t"), clock=Clock())
    for _ in range(3):
        failures.failed("partition 1", FULL)
        failures.failed("partition 1", KeyError("app"))
    failures.given_up("partition 1")
    # Given up (the partition closed), nothing recovered: no line; a new failure starts again.
    failures.failed("partition 2", FULL)
    assert [(level, message[:40], trace) for level, message, trace in said(caplog)] == [
        (logging.ERROR, "batches failing: write telemetry: SQLite", False),
        (logging.ERROR, "batches failing: KeyError: 'app' (partit", True),
        (logging.ERROR, "batches failing: write telemetry: SQLite", False),
    ]
