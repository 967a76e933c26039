"""Cosmos DB errors as the store's own, and the retry loop the Cosmos store runs around each call.

The SDK already retries a throttled (429) request after the server's ``x-ms-retry-after-ms``
and a 503 once; this loop adds exponential backoff with jitter on top, so a throttled account
or a short outage slows the processor down instead of failing its batch. Only when the retries
are spent does the caller see ``StoreUnavailable`` (with the wait the server asked for, if it
named one).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError

from store.exceptions import StoreConflict, StoreError, StoreUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_RETRIES = 8
DEFAULT_BACKOFF_S = 0.1
DEFAULT_BACKOFF_MAX_S = 10.0

# 408 timeout, 410 gone (partition moved), 429 throttled, 449 retry-with (concurrent update of
# the same item), 5xx: the same request may well succeed later.
RETRYABLE_STATUS = frozenset({408, 410, 429, 449, 500, 502, 503, 504})
# A lost conditional write or an id that exists already: retrying as is cannot succeed.
CONFLICT_STATUS = frozenset({409, 412})
_MAX_MESSAGE_CHARS = 300


def retry_after_s(exc: CosmosHttpResponseError) -> float | None:
    """The wait the server asked for (``x-ms-retry-after-ms``), in seconds."""
    headers = exc.headers or {}
    value = headers.get("x-ms-retry-after-ms")
    if value is None:
        return None
    try:
        return max(0.0, float(value) / 1000.0)
    except ValueError:
        return None


def map_error(exc: AzureError, what: str) -> StoreError:
    """The store error for an SDK error; the caller raises it ``from exc``."""
    if isinstance(exc, CosmosHttpResponseError):
        status = exc.status_code
        # The SDK's message repeats the whole response; its first lines say what went wrong.
        detail = " ".join(str(exc.message or "").split())[:_MAX_MESSAGE_CHARS]
        message = f"{what}: Cosmos DB answered {status}"
        if exc.sub_status:
            message += f"/{exc.sub_status}"
        message += f": {detail}"
        if status in RETRYABLE_STATUS:
            return StoreUnavailable(message, retry_after=retry_after_s(exc))
        if status in CONFLICT_STATUS:
            return StoreConflict(message)
        return StoreError(message)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError):
        return StoreUnavailable(f"{what}: Cosmos DB unreachable: {exc}")
    return StoreError(f"{what}: {exc}")


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep retrying a retryable failure: ``max_retries`` waits of
    ``backoff_s * 2**attempt`` (capped at ``backoff_max_s``), each between half and all of that
    (jitter, so throttled writers do not come back in step), and never shorter than the wait the
    server asked for."""

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S

    def delay(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_s * 2.0**attempt)
        # Jitter only; not a secret.
        jittered = ceiling / 2 + random.uniform(0, ceiling / 2)
        return max(jittered, retry_after or 0.0)

    async def call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying retryable Cosmos failures; raise a StoreError when the
        failure is not retryable or the retries are spent."""
        attempt = 0
        while True:
            try:
                return await operation()
            except asyncio.CancelledError:
                raise
            except AzureError as exc:
                error = map_error(exc, what)
                if not error.retryable or attempt >= self.max_retries:
                    if error.retryable and error.retry_after is None:
                        # Tell the caller how long this loop would have waited next.
                        error.retry_after = self.delay(attempt, None)
                    raise error from exc
                wait = self.delay(attempt, error.retry_after)
            attempt += 1
            logger.warning(
                "%s failed (%s); retry %d of %d in %.2fs",
                what,
                error,
                attempt,
                self.max_retries,
                wait,
                extra={"retry_attempt": attempt, "retry_wait_s": wait},
            )
            await asyncio.sleep(wait)
