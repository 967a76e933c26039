"""Cosmos SDK errors become store errors with the right retryability; how a Cosmos call retries."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest
from azure.core.exceptions import AzureError, ServiceRequestError, ServiceResponseError
from azure.cosmos.exceptions import (
    CosmosClientTimeoutError,
    CosmosHttpResponseError,
    CosmosResourceNotFoundError,
)
from pydantic import ValidationError

from common.errors import Misconfigured
from common.retry import Backoff
from store.cosmos import CosmosStore
from store.cosmos_config import CosmosSettings
from store.cosmos_errors import call, map_error, read_item_or_none, retry_after_s
from store.cosmos_evaluations import CosmosEvaluationStore
from store.exceptions import (
    ContainerNotFound,
    StoreConflict,
    StoreError,
    StoreMisconfigured,
    StoreUnavailable,
)
from tests.unit.flaky import Flaky


def http_error(status: int, retry_after_ms: str | None = None) -> CosmosHttpResponseError:
    error = CosmosHttpResponseError(status_code=status, message=f"status {status}\nsecond line")
    if retry_after_ms is not None:
        error.headers = {"x-ms-retry-after-ms": retry_after_ms}
    return error


@pytest.mark.parametrize("status", [408, 410, 429, 449, 500, 502, 503, 504])
def test_transient_statuses_are_retryable(status: int) -> None:
    error = map_error(http_error(status), "upsert x")
    assert isinstance(error, StoreUnavailable)
    assert error.retryable is True
    assert f"upsert x: Cosmos DB answered {status}" in str(error)


@pytest.mark.parametrize("status", [400, 413])
def test_client_errors_are_not_retryable(status: int) -> None:
    error = map_error(http_error(status), "upsert x")
    assert type(error) is StoreError
    assert error.retryable is False


@pytest.mark.parametrize("status", [401, 403, 404])
def test_setup_errors_are_misconfiguration_not_a_bad_request(status: int) -> None:
    error = map_error(http_error(status), "upsert x")
    assert isinstance(error, StoreMisconfigured) and isinstance(error, Misconfigured)
    assert error.retryable is False


def not_found(sub_status: int | None) -> CosmosResourceNotFoundError:
    error = CosmosResourceNotFoundError(status_code=404, message="Resource Not Found")
    error.sub_status = sub_status
    return error


@pytest.mark.parametrize("sub_status", [None, 0, 1003])
def test_a_404_that_reaches_the_mapping_names_the_missing_container(sub_status: int | None) -> None:
    error = map_error(not_found(sub_status), "save state $Default/0", "state")
    assert isinstance(error, ContainerNotFound) and isinstance(error, StoreMisconfigured)
    assert error.retryable is False
    said = str(error)
    assert said.startswith("save state $Default/0: Cosmos DB answered 404")
    assert "container 'state' or its database does not exist" in said
    assert "create_if_missing" in said  # what to do about it


@pytest.mark.parametrize("sub_status", [1002, 1013])
def test_a_404_that_passes_is_retried(sub_status: int) -> None:
    # 1002: the replica has not caught up with the session; 1013: the container is still
    # being created. Neither is a container that is gone.
    error = map_error(not_found(sub_status), "read state", "state")
    assert isinstance(error, StoreUnavailable) and error.retryable is True


class Container:
    """A container whose point reads answer 404 with ``sub_status``; ``exists`` says
    whether reading the container itself works."""

    id = "state"

    def __init__(self, sub_status: int | None, exists: bool) -> None:
        self.sub_status = sub_status
        self.exists = exists
        self.container_reads = 0

    async def read_item(self, item: str, partition_key: str) -> dict[str, Any]:
        raise not_found(self.sub_status)

    async def read(self) -> dict[str, Any]:
        self.container_reads += 1
        if not self.exists:
            raise not_found(None)
        return {"id": self.id}


@pytest.mark.parametrize("sub_status", [None, 0])
async def test_a_bare_404_of_an_item_in_an_existing_container_is_no_item(
    sub_status: int | None,
) -> None:
    container = Container(sub_status, exists=True)
    assert await read_item_or_none(container, "p0", "$Default") is None  # type: ignore[arg-type]
    assert container.container_reads == 1


@pytest.mark.parametrize("sub_status", [None, 0])
async def test_a_bare_404_of_an_item_in_a_container_that_is_gone_is_an_error(
    sub_status: int | None,
) -> None:
    container = Container(sub_status, exists=False)
    operation = functools.partial(read_item_or_none, container, "p0", "$Default")
    with pytest.raises(ContainerNotFound, match="container 'state'"):
        await call("load state", operation, FAST, "state")


async def test_a_404_marked_as_a_missing_container_is_an_error_without_reading_it() -> None:
    container = Container(1003, exists=True)  # the service's word is taken as it is
    operation = functools.partial(read_item_or_none, container, "p0", "$Default")
    with pytest.raises(ContainerNotFound):
        await call("load state", operation, FAST, "state")
    assert container.container_reads == 0


def test_a_full_partition_key_is_a_refusal_of_its_events_not_misconfiguration() -> None:
    full = http_error(403)
    full.sub_status = 1014
    error = map_error(full, "upsert x")
    assert type(error) is StoreError and "403/1014" in str(error)


@pytest.mark.parametrize("status", [409, 412])
def test_lost_conditions_are_conflicts(status: int) -> None:
    error = map_error(http_error(status), "upsert x")
    assert isinstance(error, StoreConflict)
    assert error.retryable is False


def test_retry_after_header_is_carried_in_seconds() -> None:
    error = map_error(http_error(429, "250"), "upsert x")
    assert error.retry_after == pytest.approx(0.25)
    assert retry_after_s(http_error(429, "not-a-number")) is None
    assert retry_after_s(http_error(429)) is None


@pytest.mark.parametrize(
    "exc",
    [
        ServiceRequestError("connection refused"),
        ServiceResponseError("connection reset"),
        CosmosClientTimeoutError(),
    ],
)
def test_transport_failures_are_retryable(exc: AzureError) -> None:
    error = map_error(exc, "read y")
    assert isinstance(error, StoreUnavailable)
    assert str(error).startswith("read y: Cosmos DB unreachable")


def test_other_sdk_errors_are_not_retryable() -> None:
    error = map_error(AzureError("odd"), "read y")
    assert type(error) is StoreError
    assert error.retryable is False


def test_delay_grows_is_capped_and_honours_retry_after() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, max_retries=10)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [backoff.delay(attempt, None) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
    assert backoff.delay(0, 3.0) == 3.0


def test_the_max_retries_setting_sets_the_limit_of_the_default_schedule() -> None:
    assert CosmosSettings().backoff == Backoff(initial_s=0.1, max_s=10.0, max_retries=8)
    assert CosmosSettings(max_retries=2).backoff == Backoff(
        initial_s=0.1, max_s=10.0, max_retries=2
    )


FAST = Backoff(initial_s=0.001, max_s=0.002, max_retries=3)


async def test_retryable_failures_are_retried_until_success() -> None:
    operation = Flaky(http_error(429, "1"), http_error(503), ServiceRequestError("down"))
    assert await call("op", operation, FAST) == "ok"
    assert operation.calls == 4


async def test_retries_spent_raise_unavailable_from_the_sdk_error() -> None:
    errors = [http_error(503) for _ in range(4)]
    operation = Flaky(*errors)
    with pytest.raises(StoreUnavailable) as failure:
        await call("op", operation, FAST)
    assert operation.calls == 4
    assert failure.value.__cause__ is errors[-1]
    assert failure.value.retry_after is not None and failure.value.retry_after > 0


async def test_non_retryable_failure_is_raised_at_once() -> None:
    operation = Flaky(http_error(400))
    with pytest.raises(StoreError) as failure:
        await call("op", operation, FAST)
    assert operation.calls == 1
    assert failure.value.retryable is False


async def test_zero_retries_means_one_attempt() -> None:
    operation = Flaky(http_error(429, "5"))
    with pytest.raises(StoreUnavailable) as failure:
        await call("op", operation, Backoff(max_retries=0))
    assert operation.calls == 1
    assert failure.value.retry_after == pytest.approx(0.005)


async def test_cancellation_during_backoff_propagates() -> None:
    backoff = Backoff(initial_s=60, max_s=60, max_retries=5)
    operation = Flaky(http_error(503))
    task = asyncio.create_task(call("op", operation, backoff))
    async with asyncio.timeout(5):
        while operation.calls == 0:
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert operation.calls == 1


@pytest.mark.parametrize(
    ("endpoint", "said"),
    [
        ("not a url", "is not an account URL"),
        ("ftp://account.documents.azure.com/", "is not an account URL"),
        ("https://", "is not an account URL"),
        ("https://[::1", "is not a URL: Invalid IPv6 URL"),
        ("https://account.documents.azure.com:99999/", "is not a URL: Port out of range"),
    ],
)
def test_an_endpoint_that_is_no_account_url_is_named(endpoint: str, said: str) -> None:
    # The SDK takes any text and fails at the first request, reported as unreachable.
    with pytest.raises(ValueError, match=said):
        CosmosSettings(endpoint=endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "AccountEndpoint=https://account.documents.azure.com:443/;AccountKey=s3cr3tK3y==;",
        "https://admin:s3cr3t@account.documents.azure.com:443/",
        "https://account.documents.azure.com:443/?sig=s3cr3t",
        "https://admin:s3cr3t@account.documents.azure.com:99999/",
        # urlsplit's error quoted a port that is no number, the key after it with it.
        "https://account.documents.azure.com:443;AccountKey=s3cr3tK3y==",
        # Passed, to be named in every later store error.
        "https://account.documents.azure.com:443/;AccountKey=s3cr3tK3y==;",
    ],
)
def test_an_endpoint_holding_a_secret_is_refused_without_quoting_it(endpoint: str) -> None:
    """A connection string pasted as the endpoint was quoted whole, its AccountKey with it
    (error: azure.cosmos.endpoint: 'AccountEndpoint=...;AccountKey=...' is not an account
    URL); and userinfo or a query passed, to be named in every later store error."""
    with pytest.raises(ValidationError) as refused:
        CosmosSettings(endpoint=endpoint)
    # What load_settings prints (the error's input stays out of it).
    said = refused.value.errors()[0]["msg"]
    assert "azure.cosmos.key" in said or "is not a URL" in said
    assert "s3cr3t" not in said


def test_a_key_that_is_not_base64_is_named() -> None:
    # The SDK signs each request with the decoded key: binascii.Error at the first one.
    with pytest.raises(ValueError, match="is not a Cosmos DB key"):
        CosmosSettings(endpoint="https://a.documents.azure.com:443/", key="not-base64!")
    assert CosmosSettings(endpoint="https://localhost:8081/", key="a2V5").key is not None


async def test_an_unreachable_account_is_one_store_error() -> None:
    # Nothing listens on port 1: the SDK's own error was raised as it is (a traceback).
    store = CosmosStore("http://127.0.0.1:1/", "a2V5", backoff=Backoff(max_retries=0))
    with pytest.raises(StoreUnavailable, match=r"open the Cosmos DB account at .*unreachable"):
        async with store:
            pass


async def test_a_stores_errors_name_its_endpoint_without_what_may_be_secret() -> None:
    """A store made with an endpoint that holds a query or userinfo (not through the settings,
    which refuse them) named it whole in its errors."""
    endpoint = "https://admin:s3cr3t@account.documents.azure.com:443/?sig=s3cr3t"
    store = CosmosStore(endpoint, "a2V5")
    with pytest.raises(StoreError) as error:
        await store.ping()
    assert str(error.value).startswith("Cosmos store https://account.documents.azure.com:443 ")
    assert "s3cr3t" not in str(error.value)
    evaluations = CosmosEvaluationStore(endpoint, "a2V5", database="evalstream")
    with pytest.raises(StoreError) as error:
        await evaluations.load_manifest("m")
    assert "s3cr3t" not in str(error.value)
