"""Delivering a batch to a handler until it succeeds: the sources' shared retry loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)

# Pauses between attempts of a failed batch (and of a failed partition initialisation).
RETRY_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


def backoff(failures: int, exc: BaseException) -> float:
    """The pause before the next attempt: the schedule above, or the error's retry_after."""
    delay = RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)]
    retry_after = getattr(exc, "retry_after", None)
    return max(delay, retry_after) if isinstance(retry_after, (int, float)) else delay


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``; True when ``stop`` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()


async def deliver(
    attempt: Callable[[], Awaitable[None]],
    *,
    partition_id: str,
    first_sequence: int,
    closing: Callable[[], bool],
    stop: asyncio.Event,
) -> bool:
    """Run ``attempt`` until it succeeds (True), or until the partition is closing or the
    source stopping (False: the batch is abandoned, and the caller must abandon later ones,
    whose checkpoint would cover it)."""
    failures = 0
    while not closing():
        try:
            await attempt()
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Supervision boundary: the batch was not checkpointed. Deliver the same batch
            # again after a pause: moving on would let a later checkpoint cover it.
            delay = backoff(failures, exc)
            failures += 1
            logger.exception(
                "batch failed; retrying",
                extra={
                    "partition": partition_id,
                    "first_sequence": first_sequence,
                    "retry_in_s": delay,
                },
            )
            if await wait_or_stop(stop, delay):
                break
    return False
