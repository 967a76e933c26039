"""How the Cosmos store (store/cosmos.py) splits a batch into bounded concurrent upserts and
picks its HTTP transport, without a server."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from azure.core.pipeline.transport import AioHttpTransport
from azure.cosmos.exceptions import CosmosHttpResponseError

from common.retry import Backoff
from store.cosmos import write_all
from store.cosmos_connection import transport_options
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
                raise CosmosHttpResponseError(status_code=503, message="down")
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
