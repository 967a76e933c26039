"""Logging a failure that is retried for as long as it lasts (a full disk, a store away): one
line when it starts, a reminder with the count at most every ``repeat_s``, one line when it
ends. Logged at each retry, a full disk wrote a traceback per partition every 0.1-5 s."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.errors import is_retryable

# A failure that goes on is recalled in at most one line this often.
REPEAT_LOG_S = 60.0


def is_passing(exc: BaseException) -> bool:
    """A failure that says what passing cause it has (the store unavailable, throttled, the
    disk full; a connection broken): its message tells all, a traceback would add nothing."""
    return is_retryable(exc) or isinstance(exc, ConnectionError | TimeoutError)


def describe(exc: BaseException) -> str:
    text = str(exc)
    return text if is_retryable(exc) and text else f"{type(exc).__name__}: {text}"


class RepeatedFailure:
    """The failures of one kind of work (``what``: "batches") across the keys retrying it
    (partitions). It starts with a first failure while no key is failing, and ends when every
    key that failed has succeeded (one line) or given up (no line: nothing recovered)."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        *,
        repeat_s: float = REPEAT_LOG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.logger = logger
        self.repeat_s = repeat_s
        self.clock = clock
        self._failing: set[str] = set()
        self._said: set[str] = set()  # the causes said since the failures began
        self._since = 0.0  # when the failures began
        self._count = 0  # failures since they began
        self._unlogged = 0  # failures since the last line
        self._logged_at = 0.0

    @property
    def failing(self) -> bool:
        return bool(self._failing)

    def failed(
        self,
        key: str,
        exc: BaseException,
        retry_in: float | None = None,
        *,
        kind: str | None = None,
    ) -> None:
        """``key`` failed with ``exc``. Failures of one ``kind`` are said once; by default
        the kind is the error's text, which must then not name the item that failed (pass a
        ``kind`` without it, e.g. "503" for a write of any document)."""
        now = self.clock()
        again = f" (next in {retry_in:.1f} s)" if retry_in is not None else ""
        cause = describe(exc)
        said_as = cause if kind is None else kind
        if not self._failing:
            self._since = now
            self._count = 0
            self._unlogged = 0
            self._said.clear()
        self._failing.add(key)
        self._count += 1
        if said_as not in self._said:
            self._said.add(said_as)
            self._logged_at = now
            # A cause that is not a passing one may be a bug: its traceback, once.
            self.logger.error(
                "%s failing: %s (%s); retrying until they succeed%s, nothing is lost",
                self.what,
                cause,
                key,
                again,
                exc_info=None if is_passing(exc) else exc,
            )
            return
        self._unlogged += 1
        if now - self._logged_at < self.repeat_s:
            return
        self.logger.warning(
            "%s still failing: %s (%d more failure%s in %.0f s, %d failing now); retrying%s",
            self.what,
            cause,
            self._unlogged,
            "" if self._unlogged == 1 else "s",
            now - self._logged_at,
            len(self._failing),
            again,
        )
        self._logged_at = now
        self._unlogged = 0

    def succeeded(self, key: str) -> None:
        if key not in self._failing:
            return
        self._failing.discard(key)
        if not self._failing:
            self.logger.warning(
                "%s succeed again, after %d failure%s over %.0f s",
                self.what,
                self._count,
                "" if self._count == 1 else "s",
                self.clock() - self._since,
            )

    def given_up(self, key: str) -> None:
        """``key`` stopped retrying (its partition closed): no longer waited for."""
        self._failing.discard(key)
