"""One backoff policy type and one retry loop, used by every component that retries.

``Backoff`` says how long to wait before attempt ``n`` (exponential with jitter, never shorter
than the wait the failure asked for) and when to give up; ``retry`` runs an operation under it.
Callers differ only in which failures they retry and when they stop, never in the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from common.errors import is_retryable

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_INITIAL_S = 0.1
DEFAULT_MAX_S = 10.0
DEFAULT_MULTIPLIER = 2.0
DEFAULT_JITTER_FRACTION = 0.5


@dataclass(frozen=True)
class Backoff:
    """Waits of ``initial_s * multiplier**attempt`` capped at ``max_s``; with ``jitter`` each is
    drawn between ``1 - jitter_fraction`` (default half) and all of that, so clients throttled
    together do not return in step. ``max_retries=None`` retries until the caller stops."""

    initial_s: float = DEFAULT_INITIAL_S
    max_s: float = DEFAULT_MAX_S
    multiplier: float = DEFAULT_MULTIPLIER
    jitter: bool = True
    max_retries: int | None = None
    # How much of a wait jitter may take off; some callers keep their waits closer to the
    # schedule (a subscriber's redelivery pause, a publisher's documented total wait).
    jitter_fraction: float = DEFAULT_JITTER_FRACTION

    def __post_init__(self) -> None:
        if self.initial_s < 0 or self.max_s < self.initial_s or self.multiplier < 1:
            raise ValueError("need 0 <= initial_s <= max_s and multiplier >= 1")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must be >= 0 or None")
        if not 0 <= self.jitter_fraction <= 1:
            raise ValueError("jitter_fraction must be between 0 and 1")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The pause before retry number ``attempt + 1`` (``attempt`` counts from 0)."""
        ceiling = min(self.max_s, self.initial_s * self.multiplier ** min(attempt, 64))
        if self.jitter:
            spread = ceiling * self.jitter_fraction
            # Jitter only; not a secret.
            ceiling = ceiling - spread + random.uniform(0, spread)
        return max(ceiling, retry_after or 0.0)

    def exhausted(self, attempt: int) -> bool:
        """True once ``attempt`` retries have been spent."""
        return self.max_retries is not None and attempt >= self.max_retries


class Stopped(Exception):
    """``retry`` gave up because its caller stopped it; the last failure is the cause."""


async def until_first(
    *waits: asyncio.Event | asyncio.Future[Any], timeout: float | None = None
) -> None:
    """Return once any of ``waits`` is set (an event) or done (a future), or after ``timeout``
    seconds. The futures are left as they are (running, if another came first: the caller
    decides what to do with them); nothing waiting on the events is left behind."""
    mine = [asyncio.ensure_future(wait.wait()) for wait in waits if isinstance(wait, asyncio.Event)]
    theirs = [wait for wait in waits if not isinstance(wait, asyncio.Event)]
    try:
        await asyncio.wait([*mine, *theirs], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in mine:
            wait.cancel()


async def sleep_or_stop(seconds: float, stop: asyncio.Event | None) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    if stop is None:
        await asyncio.sleep(seconds)
        return False
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff,
    what: str,
    retryable: Callable[[BaseException], bool] = is_retryable,
    map_error: Callable[[Exception], BaseException] | None = None,
    stop: asyncio.Event | None = None,
    giving_up: Callable[[], bool] | None = None,
    log_fields: Mapping[str, Any] | None = None,
    log_traceback: bool = False,
    on_failure: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run ``operation`` until it succeeds and return its value.

    A failure is first mapped (``map_error``, e.g. an SDK error to ours), then retried after
    ``backoff.delay`` when ``retryable`` says so and retries remain; otherwise the mapped error
    is raised ``from`` the original. When the retries are spent the error carries the wait the
    loop would have made next as ``retry_after``, so a caller further out can keep pacing.
    ``stop`` (an event) and ``giving_up`` (checked before each attempt) end the loop with
    ``Stopped``. Cancellation always propagates. ``log_traceback`` adds the failure's
    traceback to the warning of each retry: for callers that retry any failure at a
    supervision boundary, where the cause may be a bug rather than a passing condition.
    ``on_failure(error, wait)`` replaces that warning: for callers that say a lasting failure
    once rather than at each retry (``common.repeated``).
    """
    attempt = 0
    while True:
        if giving_up is not None and giving_up():
            raise Stopped(what)
        try:
            return await operation()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = map_error(exc) if map_error is not None else exc
            if not retryable(error) or backoff.exhausted(attempt):
                if retryable(error) and getattr(error, "retry_after", 0) is None:
                    with contextlib.suppress(AttributeError):
                        error.retry_after = backoff.delay(attempt)  # type: ignore[attr-defined]
                if error is exc:
                    raise
                raise error from exc
            wait = backoff.delay(attempt, getattr(error, "retry_after", None))
            attempt += 1
            limit = "∞" if backoff.max_retries is None else str(backoff.max_retries)
            if on_failure is not None:
                on_failure(error, wait)
            else:
                logger.warning(
                    "%s failed (%s); retry %d of %s in %.2fs",
                    what,
                    error,
                    attempt,
                    limit,
                    wait,
                    extra={"retry_attempt": attempt, "retry_wait_s": wait, **(log_fields or {})},
                    exc_info=exc if log_traceback else None,
                )
            if await sleep_or_stop(wait, stop):
                raise Stopped(what) from exc
