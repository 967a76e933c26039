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
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # The year 1 at +14:00 is in the year 0 in UTC.
        raise ValueError(f"{moment.isoformat()} is outside the years 1-9999 in UTC") from None


def align(moment: datetime, length: timedelta) -> datetime:
    """The start of the ``length`` window that holds ``moment``."""
    moment = _aware(moment)
    return moment - (moment - EPOCH) % length


def window_at(policy: EvaluationPolicy, moment: datetime) -> Window:
    """The window of ``policy`` holding ``moment``."""
    start = align(moment, policy.window)
    return Window(start=start, end=start + policy.window)


def check_window(policy: EvaluationPolicy, window: Window, now: datetime) -> None:
    """Raise ValueError unless ``window`` is one of ``policy``'s windows and due at ``now``.

    Any other span would be stored as its own result beside the policy's windows that overlap
    it, the same documents counted in both; a window not due yet can still get events, which
    its results would miss while a later trigger of it found every unit done."""
    own = window_at(policy, window.start)
    if own != window:
        raise ValueError(
            f"{window.key} is not a window of policy {policy.name!r} (its windows are "
            f"{policy.window} long from UTC midnight, e.g. {own.key})"
        )
    if not is_due(policy, window, now):
        raise ValueError(
            f"{window.key} of policy {policy.name!r} is not due yet: its events may arrive "
            f"until {policy.lateness} after its end (the policy's lateness)"
        )


def is_due(policy: EvaluationPolicy, window: Window, now: datetime) -> bool:
    """True once ``window.end + lateness`` has passed at ``now``."""
    # Not ``end + lateness``: that is past the year 9999 for the calendar's last windows.
    return _aware(now) - policy.lateness >= window.end


def last_due(policy: EvaluationPolicy, now: datetime) -> Window:
    """The most recent window of ``policy`` that is due at ``now``."""
    return window_at(policy, _aware(now) - policy.lateness - policy.window)


def windows_between(policy: EvaluationPolicy, start: datetime, end: datetime) -> Iterator[Window]:
    """Every window of ``policy`` that overlaps ``[start, end)``, oldest first (those the years
    1-9999 hold whole)."""
    start, end = _aware(start), _aware(end)
    try:
        cursor = align(start, policy.window)
    except OverflowError:
        # The window holding the year 1's first moments starts before it: from the next.
        cursor = align(start + policy.window, policy.window)
    while cursor < end:
        try:
            stop = cursor + policy.window
        except OverflowError:
            return  # the window would end after the year 9999
        yield Window(start=cursor, end=stop)
        cursor = stop


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
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else _utc(moment)
