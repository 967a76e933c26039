"""Contract: azure.cosmos.aio's retries against injected 429s, 503s and delays (fault proxy).

The client is configured as against Azure (HTTPS, endpoint discovery on); only the endpoint
points at the proxy.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest
from azure.cosmos import PartitionKey, exceptions
from azure.cosmos.aio import ContainerProxy, CosmosClient

from tests.emulators.fault_proxy import FaultProxy
from tests.emulators.npm_fixtures import CosmosServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def container(
    cosmos_fault_proxy: FaultProxy, cosmos_server: CosmosServer
) -> AsyncIterator[ContainerProxy]:
    async with CosmosClient(cosmos_fault_proxy.endpoint, cosmos_server.key) as client:
        database = await client.create_database_if_not_exists(f"faults-{uuid.uuid4().hex[:10]}")
        try:
            yield await database.create_container_if_not_exists("docs", PartitionKey("/pk"))
        finally:
            cosmos_fault_proxy.reset()
            await client.delete_database(database.id)


def _writes(proxy: FaultProxy) -> list[tuple[int, str | None]]:
    return [
        (r.status, r.injected) for r in proxy.requests if r.method == "POST" and "/docs" in r.path
    ]


async def _count(container: ContainerProxy, pk: str) -> int:
    rows = [
        row
        async for row in container.query_items(
            "SELECT VALUE COUNT(1) FROM c WHERE c.pk = @pk",
            parameters=[{"name": "@pk", "value": pk}],
            partition_key=pk,
        )
    ]
    return int(rows[0])


async def test_account_metadata_points_at_the_proxy(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    await container.upsert_item({"id": "x", "pk": "p"})

    # The SDK discovers its endpoints from the account document; had the proxy not rewritten
    # them, the write would have gone straight to the server and the proxy would not see it.
    assert _writes(cosmos_fault_proxy) == [(201, None)]


async def test_throttle_burst_is_retried_and_the_write_lands_once(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    cosmos_fault_proxy.throttle(3, retry_after_ms=20, methods={"POST"})

    await container.upsert_item({"id": "t1", "pk": "p", "v": 1})

    assert _writes(cosmos_fault_proxy) == [
        (429, "throttle"),
        (429, "throttle"),
        (429, "throttle"),
        (201, None),
    ]
    assert await _count(container, "p") == 1
    assert (await container.read_item("t1", partition_key="p"))["v"] == 1


async def test_throttled_reads_are_retried(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    await container.upsert_item({"id": "r1", "pk": "p"})
    cosmos_fault_proxy.throttle(2, retry_after_ms=10, methods={"GET"})

    item = await container.read_item("r1", partition_key="p")

    assert item["id"] == "r1"
    assert cosmos_fault_proxy.injected("throttle") == 2


async def test_one_503_on_a_write_is_retried(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    cosmos_fault_proxy.unavailable(1, methods={"POST"})

    await container.upsert_item({"id": "u1", "pk": "p"})

    assert _writes(cosmos_fault_proxy) == [(503, "unavailable"), (201, None)]
    assert await _count(container, "p") == 1


async def test_503_twice_in_a_row_reaches_the_caller(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    # With one region the SDK retries a 503 once (the "next region" is the same endpoint).
    cosmos_fault_proxy.unavailable(2, methods={"POST"})

    with pytest.raises(exceptions.CosmosHttpResponseError) as failure:
        await container.upsert_item({"id": "u2", "pk": "p"})

    assert failure.value.status_code == 503
    assert _writes(cosmos_fault_proxy) == [(503, "unavailable"), (503, "unavailable")]
    assert await _count(container, "p") == 0


async def test_delay_slows_matching_requests(
    cosmos_fault_proxy: FaultProxy, container: ContainerProxy
) -> None:
    await container.upsert_item({"id": "d1", "pk": "p"})
    cosmos_fault_proxy.delay(0.4, count=1, methods={"GET"})

    started = time.monotonic()
    await container.read_item("d1", partition_key="p")
    elapsed = time.monotonic() - started

    assert elapsed >= 0.4
    assert [r.injected for r in cosmos_fault_proxy.requests if r.method == "GET"][-1] == "delay"
