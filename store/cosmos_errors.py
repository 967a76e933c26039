"""Cosmos DB errors as the store's own, and how both Cosmos stores retry each call.

The SDK already retries a throttled (429) request after the server's ``x-ms-retry-after-ms``
and a 503 once; ``call`` adds the common retry loop (``common.retry``) on top, so a throttled
account or a short outage slows the processor down instead of failing its batch. Only when the
retries are spent does the caller see ``StoreUnavailable`` (with the wait the server asked for,
if it named one, else the wait the loop would have made next).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import CosmosClientTimeoutError, CosmosHttpResponseError

from common.retry import Backoff, retry
from store.exceptions import StoreConflict, StoreError, StoreMisconfigured, StoreUnavailable

T = TypeVar("T")

# 408 timeout, 410 gone (partition moved), 429 throttled, 449 retry-with (concurrent update of
# the same item), 5xx: the same request may well succeed later.
RETRYABLE_STATUS = frozenset({408, 410, 429, 449, 500, 502, 503, 504})
# A lost conditional write or an id that exists already: retrying as is cannot succeed.
CONFLICT_STATUS = frozenset({409, 412})
# Unauthorised, forbidden, or a database/container that is not there: the account's setup,
# not the request, is wrong (the pipeline must not take it for a poison event).
SETUP_STATUS = frozenset({401, 403, 404})
PK_FULL_SUB_STATUS = 1014
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
        # 403/1014: this partition key (app and day) is full, which only its events meet.
        if status in SETUP_STATUS and (status, exc.sub_status) != (403, PK_FULL_SUB_STATUS):
            return StoreMisconfigured(message)
        return StoreError(message)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError):
        return StoreUnavailable(f"{what}: Cosmos DB unreachable: {exc}")
    return StoreError(f"{what}: {exc}")


async def call(what: str, operation: Callable[[], Awaitable[T]], backoff: Backoff) -> T:
    """Run one Cosmos call under the common retry loop: SDK errors become store errors, the
    retryable ones are retried on ``backoff``; raise the StoreError that ends it."""

    def mapped(exc: Exception) -> BaseException:
        return map_error(exc, what) if isinstance(exc, AzureError) else exc

    return await retry(operation, backoff=backoff, what=what, map_error=mapped)
