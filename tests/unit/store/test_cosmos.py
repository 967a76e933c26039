"""How the Cosmos store (store/cosmos.py) splits a batch into bounded concurrent upserts and
picks its HTTP transport, without a server."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest
from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos.exceptions import CosmosHttpResponseError

from common.retry import Backoff
from store.cosmos import write_all
from store.cosmos_connection import transport_options
from store.cosmos_errors import request_failures
from store.exceptions import StoreUnavailable


class FakeContainer:
    """Records how many upserts are in flight at once; fails the items it is told to."""

    def __init__(self, fail_ids: set[str] | None = None) -> None:
        self.id = "fake"
        self.fail_ids = fail_ids or set()
        self.in_flight = 0
        self.most_in_flight = 0
        self.stored: list[str] = []

    async def upsert_item(self, item: dict[str, Any], *, no_response: bool) -> None:
        assert no_response is True
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            if item["id"] in self.fail_ids:
                raise CosmosHttpResponseError(status_code=503, message="down")  # type: ignore[no-untyped-call]
            self.stored.append(item["id"])
        finally:
            self.in_flight -= 1


NO_RETRY = Backoff(max_retries=0)


@pytest.mark.parametrize(("limit", "expected"), [(1, 1), (8, 8), (500, 50)])
async def test_upserts_are_bounded_and_all_acknowledged(limit: int, expected: int) -> None:
    container = FakeContainer()
    items: list[tuple[Any, dict[str, Any], bool]] = [
        (container, {"id": str(i)}, False) for i in range(50)
    ]

    await write_all(items, max_concurrency=limit, backoff=NO_RETRY)

    assert sorted(container.stored, key=int) == [str(i) for i in range(50)]
    assert container.most_in_flight == expected


async def test_first_failure_raises_a_store_error_and_stops_the_rest() -> None:
    container = FakeContainer(fail_ids={"3"})
    items: list[tuple[Any, dict[str, Any], bool]] = [
        (container, {"id": str(i)}, False) for i in range(200)
    ]

    with pytest.raises(StoreUnavailable, match="upsert fake/3") as failure:
        await write_all(items, max_concurrency=4, backoff=NO_RETRY)

    assert isinstance(failure.value.__cause__, CosmosHttpResponseError)
    assert len(container.stored) < 200
    assert container.in_flight == 0


async def test_nothing_to_write_makes_no_request() -> None:
    await write_all([], max_concurrency=4, backoff=NO_RETRY)


class OutageContainer(FakeContainer):
    """Answers 503 to its first ``failures`` requests, each with an activity id of its own as
    Cosmos DB does, then stores."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.id = "telemetry"
        self.failures_left = failures

    async def upsert_item(self, item: dict[str, Any], *, no_response: bool) -> None:
        await asyncio.sleep(0)
        if self.failures_left > 0:
            self.failures_left -= 1
            message = f"unavailable ActivityId: {self.failures_left}"
            raise CosmosHttpResponseError(status_code=503, message=message)  # type: ignore[no-untyped-call]
        self.stored.append(item["id"])


async def test_an_outage_is_said_in_two_lines_not_one_per_document_and_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 90 s outage of Cosmos DB wrote 2,704 lines: a warning per document per retry."""
    caplog.set_level(logging.INFO)
    container = OutageContainer(failures=600)
    items: list[tuple[Any, dict[str, Any], bool]] = [
        (container, {"id": str(i)}, False) for i in range(200)
    ]
    every_retry = Backoff(initial_s=0.0, max_s=0.0, jitter=False, max_retries=None)

    await write_all(items, max_concurrency=8, backoff=every_retry, failures=request_failures())

    assert sorted(container.stored, key=int) == [str(i) for i in range(200)]
    said = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert len(said) == 2, said
    (first_level, first), (last_level, last) = said
    assert first_level == logging.ERROR
    assert first.startswith("Cosmos DB requests failing: upsert telemetry/")
    assert ": Cosmos DB answered 503: Status code: 503 unavailable ActivityId: " in first
    assert first.endswith(
        "(container 'telemetry'); retrying until they succeed (next in 0.0 s), nothing is lost"
    )
    assert last_level == logging.WARNING
    assert last.startswith("Cosmos DB requests succeed again, after 600 failures over ")


def _clear_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


def test_no_environment_lookups_per_request_without_a_proxy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _clear_proxies(monkeypatch)
    options = transport_options()
    assert isinstance(options["transport"], AioHttpTransport)
    assert options["transport"]._use_env_settings is False


def test_a_proxy_in_the_environment_keeps_the_sdk_default(monkeypatch: pytest.MonkeyPatch) -> None:
    _clear_proxies(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert transport_options() == {}
