"""Cosmos DB errors as the store's own, and how both Cosmos stores retry each call.

The SDK already retries a throttled (429) request after the server's ``x-ms-retry-after-ms``
and a 503 once; ``call`` adds the common retry loop (``common.retry``) on top, so a throttled
account or a short outage slows the processor down instead of failing its batch. Only when the
retries are spent does the caller see ``StoreUnavailable`` (with the wait the server asked for,
if it named one, else the wait the loop would have made next).

A 404 is told apart here, the one place it is mapped: a missing *item* is an answer (no
snapshot, no such document: ``read_item_or_none``), a missing *container or database* is the
store set up wrongly (``ContainerNotFound``), never "nothing there".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.cosmos.aio import ContainerProxy
from azure.cosmos.exceptions import (
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
    CosmosResourceNotFoundError,
)

from common.repeated import RepeatedFailure
from common.retry import Backoff, retry
from store.exceptions import (
    ContainerNotFound,
    StoreConflict,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
)

T = TypeVar("T")

logger = logging.getLogger(__name__)

# 408 timeout, 410 gone (partition moved), 429 throttled, 449 retry-with (concurrent update of
# the same item), 5xx: the same request may well succeed later.
RETRYABLE_STATUS = frozenset({408, 410, 429, 449, 500, 502, 503, 504})
# A lost conditional write or an id that exists already: retrying as is cannot succeed.
CONFLICT_STATUS = frozenset({409, 412})
# Unauthorised, forbidden, or a database/container that is not there: the account's setup,
# not the request, is wrong (the pipeline must not take it for a poison event).
SETUP_STATUS = frozenset({401, 403, 404})
PK_FULL_SUB_STATUS = 1014
# 404 sub-statuses that pass: the replica has not caught up with the session yet (1002), the
# container is still being created (1013). Cosmos DB marks a missing container or database
# with 1003 and a missing item with 0.
PASSING_NOT_FOUND_SUB_STATUS = frozenset({1002, 1013})
OWNER_NOT_FOUND_SUB_STATUS = 1003
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


def map_error(exc: AzureError, what: str, container: str | None = None) -> StoreError:
    """The store error for an SDK error met doing ``what`` in ``container``; the caller raises
    it ``from exc``. Every 404 that reaches here is a missing container or database: the one
    call whose 404 may mean a missing item, a point read, is told apart before
    (``read_item_or_none``)."""
    if isinstance(exc, CosmosHttpResponseError):
        status = exc.status_code
        # The SDK's message repeats the whole response; its first lines say what went wrong.
        detail = " ".join(str(exc.message or "").split())[:_MAX_MESSAGE_CHARS]
        message = f"{what}: Cosmos DB answered {status}"
        if exc.sub_status:
            message += f"/{exc.sub_status}"
        message += f": {detail}"
        if status in RETRYABLE_STATUS or (
            status == 404 and exc.sub_status in PASSING_NOT_FOUND_SUB_STATUS
        ):
            return StoreUnavailable(message, retry_after=retry_after_s(exc))
        if status == 404:
            where = f"container {container!r} or its database" if container else "the database"
            return ContainerNotFound(
                f"{message} — {where} does not exist (deleted?): create it "
                "again, or restart the service, which creates missing containers at start "
                "unless azure.cosmos.create_if_missing is false"
            )
        if status in CONFLICT_STATUS:
            return StoreConflict(message)
        # 403/1014: this partition key (app and day) is full, which only its events meet.
        if status in SETUP_STATUS and (status, exc.sub_status) != (403, PK_FULL_SUB_STATUS):
            return StoreMisconfigured(message)
        return StoreError(message)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | CosmosClientTimeoutError):
        return StoreUnavailable(f"{what}: Cosmos DB unreachable: {exc}")
    return StoreError(f"{what}: {exc}")


def failure_kind(exc: BaseException) -> str:
    """What a failure is, without the request or item it hit and without the parts of the
    answer that differ per request (Cosmos DB names an activity id in every message)."""
    if isinstance(exc, CosmosHttpResponseError):
        sub_status = f"/{exc.sub_status}" if exc.sub_status else ""
        return f"Cosmos DB answered {exc.status_code}{sub_status}"
    return type(exc).__name__


def request_failures() -> RepeatedFailure:
    """How a store says its requests failing: one line as they start (per kind of failure), a
    reminder a minute, one line as they end, not a warning per document and retry (a 90 s
    outage was 2,704 lines)."""
    return RepeatedFailure("Cosmos DB requests", logger)


async def call(
    what: str,
    operation: Callable[[], Awaitable[T]],
    backoff: Backoff,
    container: str | None = None,
    failures: RepeatedFailure | None = None,
) -> T:
    """Run one Cosmos call (in ``container``, when it is one container's) under the common
    retry loop: SDK errors become store errors, the retryable ones are retried on
    ``backoff``; raise the StoreError that ends it. Retries are said through ``failures``
    (a store's requests share one), or else through a ``request_failures()`` of the call's own.
    A call that gives up leaves its container failing: its batch is retried further out."""
    failures = failures if failures is not None else request_failures()
    key = f"container {container!r}" if container else "the database"
    kind = ""

    def mapped(exc: Exception) -> BaseException:
        nonlocal kind
        kind = failure_kind(exc)
        return map_error(exc, what, container) if isinstance(exc, AzureError) else exc

    def failed(error: BaseException, wait: float) -> None:
        failures.failed(key, error, wait, kind=f"{kind} ({key})")

    result = await retry(operation, backoff=backoff, what=what, map_error=mapped, on_failure=failed)
    failures.succeeded(key)
    return result


async def read_item_or_none(
    container: ContainerProxy, item_id: str, pk: str
) -> dict[str, Any] | None:
    """The item, or None when the container exists and holds no such item.

    A 404 alone does not say what is missing. Cosmos DB answers 404/0 for a missing item and
    404/1003 for a missing container or database; but when the client has not cached the
    container's properties yet, the SDK reads the container first, and that read of a
    container that is gone is itself a bare 404; cosmosdb-server answers a bare 404 in every
    case. So a bare 404 is checked by reading the container: its 404 is raised (a
    ``ContainerNotFound`` once mapped), never taken for "no item". Missing items are rare
    here (a partition's first start, a lookup), so the extra read costs little."""
    try:
        return await container.read_item(item_id, partition_key=pk)
    except CosmosResourceNotFoundError as exc:
        if exc.sub_status:
            raise
    await container.read()
    return None
