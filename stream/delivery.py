"""Delivering a batch to a handler until it succeeds: how every source retries its handler.

The loop itself is ``common.retry.retry``; this module only says what the sources retry (any
failure of the handler: the batch was not checkpointed, and moving on would let a later
checkpoint cover it) and when they stop (the partition is closing, or the source stopping).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from common.errors import Misconfigured
from common.repeated import RepeatedFailure
from common.retry import Backoff, Stopped, retry
from stream.exceptions import PartitionLost

logger = logging.getLogger(__name__)

# Pauses between attempts of a failed batch (and of a failed partition initialisation):
# 0.1 s doubling up to 5 s, or longer when the error asks for it (``retry_after``).
HANDLER_BACKOFF = Backoff(initial_s=0.1, max_s=5.0)
# This process's failing batches, every partition's: a full disk fails them all at once, and
# is said once (then reminded, then its end), not once per partition and retry.
BATCH_FAILURES = RepeatedFailure("batches", logger)


def any_failure(exc: BaseException) -> bool:
    """The handler is the supervision boundary: whatever it raised, the batch is due again;
    unless the handler gave up (``Misconfigured``: no retry mends it)."""
    return not isinstance(exc, Misconfigured)


def _worth_another_attempt(exc: BaseException) -> bool:
    # Another processor owns the partition now: the batch and those after it are its own.
    return any_failure(exc) and not isinstance(exc, PartitionLost)


async def deliver(
    attempt: Callable[[], Awaitable[None]],
    *,
    partition_id: str,
    first_sequence: int,
    closing: Callable[[], bool],
    stop: asyncio.Event,
    failures: RepeatedFailure = BATCH_FAILURES,
) -> bool:
    """Run ``attempt`` until it succeeds (True), or until the partition is closing or lost to
    another processor, the source stopping or the handler giving up (False: the batch is
    abandoned, and the caller must abandon later ones, whose checkpoint would cover it).
    Failures are said through ``failures``: once as they start, not at each retry."""
    key = f"partition {partition_id}"
    try:
        await retry(
            attempt,
            backoff=HANDLER_BACKOFF,
            what="batch",
            retryable=_worth_another_attempt,
            stop=stop,
            giving_up=closing,
            log_fields={"partition": partition_id, "first_sequence": first_sequence},
            on_failure=lambda exc, wait: failures.failed(key, exc, wait),
        )
    except Stopped:
        failures.given_up(key)
        return False
    except PartitionLost as exc:
        failures.given_up(key)
        # A hand-over, not a fault: said in one line, without a traceback.
        logger.warning(
            "batch abandoned: %s",
            exc,
            extra={"partition": partition_id, "first_sequence": first_sequence},
        )
        return False
    except Misconfigured as exc:
        failures.given_up(key)
        # The handler logged the error and stops the source (Pipeline.failed): one line for
        # the whole processor, not a retry warning per partition.
        logger.debug(
            "batch abandoned: %s",
            type(exc).__name__,
            extra={"partition": partition_id, "first_sequence": first_sequence},
        )
        return False
    failures.succeeded(key)
    return True
