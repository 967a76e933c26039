"""UTC-aligned evaluation windows: which window a moment falls in, which windows are due.

A policy's windows tile the time line from the Unix epoch (a UTC midnight) in steps of the
policy's window length, which divides a day or is whole days, so windows never straddle a UTC
midnight unless they are whole days themselves. A window ``[start, end)`` is due once
``end + lateness`` has passed.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from schemas.evaluation import EvaluationPolicy, Window

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _aware(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: give a timezone (e.g. Z)")
    return moment.astimezone(UTC)


def align(moment: datetime, length: timedelta) -> datetime:
    """The start of the ``length`` window that holds ``moment``."""
    moment = _aware(moment)
    return moment - (moment - EPOCH) % length


def window_at(policy: EvaluationPolicy, moment: datetime) -> Window:
    """The window of ``policy`` holding ``moment``."""
    start = align(moment, policy.window)
    return Window(start=start, end=start + policy.window)


def is_due(policy: EvaluationPolicy, window: Window, now: datetime) -> bool:
    """True once ``window.end + lateness`` has passed at ``now``."""
    return _aware(now) >= window.end + policy.lateness


def last_due(policy: EvaluationPolicy, now: datetime) -> Window:
    """The most recent window of ``policy`` that is due at ``now``."""
    return window_at(policy, _aware(now) - policy.lateness - policy.window)


def windows_between(policy: EvaluationPolicy, start: datetime, end: datetime) -> Iterator[Window]:
    """Every window of ``policy`` that overlaps ``[start, end)``, oldest first."""
    start, end = _aware(start), _aware(end)
    cursor = align(start, policy.window)
    while cursor < end:
        yield Window(start=cursor, end=cursor + policy.window)
        cursor += policy.window


def due_between(
    policy: EvaluationPolicy, start: datetime, end: datetime, now: datetime
) -> Iterator[Window]:
    """The windows of ``windows_between`` that are due at ``now``."""
    for window in windows_between(policy, start, end):
        if not is_due(policy, window, now):
            return
        yield window


def reference_window(policy: EvaluationPolicy, window: Window) -> Window:
    """The window drift metrics compare against: the one before."""
    return Window(start=window.start - policy.window, end=window.start)


def parse_window(text: str) -> Window:
    """``START/END`` in ISO-8601 (``2026-01-01T00:00Z/2026-01-01T01:00Z``)."""
    try:
        first, second = text.split("/")
        start, end = _aware(_parse(first)), _aware(_parse(second))
    except ValueError as exc:
        raise ValueError(f"window {text!r}: expected START/END in ISO-8601 ({exc})") from exc
    if end <= start:
        raise ValueError(f"window {text!r}: its end is not after its start")
    return Window(start=start, end=end)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))


def parse_moment(text: str) -> datetime:
    """An ISO-8601 moment; a date alone means its UTC midnight, naive means UTC."""
    moment = _parse(text)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise ValueError(f"{text.strip()} is beyond the calendar in UTC") from None
