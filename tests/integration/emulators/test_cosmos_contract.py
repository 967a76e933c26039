"""Contract: azure.cosmos.aio against cosmosdb-server (via the launcher) for the store's calls."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from azure.core import MatchConditions
from azure.cosmos import PartitionKey, exceptions
from azure.cosmos.aio import ContainerProxy, CosmosClient

from tests.emulators.npm_fixtures import CosmosServer

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(cosmos_server: CosmosServer) -> AsyncIterator[CosmosClient]:
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as cosmos:
        yield cosmos


@pytest.fixture
async def container(client: CosmosClient) -> AsyncIterator[ContainerProxy]:
    database = await client.create_database_if_not_exists(f"db-{uuid.uuid4().hex[:10]}")
    try:
        yield await database.create_container_if_not_exists("telemetry", PartitionKey("/pk"))
    finally:
        await client.delete_database(database.id)


async def test_create_if_not_exists_is_idempotent(client: CosmosClient) -> None:
    name = f"db-{uuid.uuid4().hex[:10]}"
    first = await client.create_database_if_not_exists(name)
    second = await client.create_database_if_not_exists(name)
    try:
        assert first.id == second.id == name
        c1 = await first.create_container_if_not_exists("docs", PartitionKey("/pk"))
        await c1.upsert_item({"id": "kept", "pk": "a"})
        c2 = await second.create_container_if_not_exists("docs", PartitionKey("/pk"))

        properties = await c2.read()
        assert properties["partitionKey"]["paths"] == ["/pk"]
        assert (await c2.read_item("kept", partition_key="a"))["id"] == "kept"
    finally:
        await client.delete_database(name)


async def test_create_read_and_duplicate_create(container: ContainerProxy) -> None:
    created = await container.create_item({"id": "e1", "pk": "app:2026-01-01", "latency_ms": 12})

    read = await container.read_item("e1", partition_key="app:2026-01-01")

    assert read["latency_ms"] == 12
    assert read["_etag"] == created["_etag"]
    with pytest.raises(exceptions.CosmosResourceExistsError) as conflict:
        await container.create_item({"id": "e1", "pk": "app:2026-01-01"})
    assert conflict.value.status_code == 409


async def test_read_of_missing_item_is_404(container: ContainerProxy) -> None:
    await container.create_item({"id": "present", "pk": "p"})

    with pytest.raises(exceptions.CosmosResourceNotFoundError) as missing:
        await container.read_item("absent", partition_key="p")
    assert missing.value.status_code == 404
    # An existing id under another partition key is missing too.
    with pytest.raises(exceptions.CosmosResourceNotFoundError):
        await container.read_item("present", partition_key="other")


async def test_every_call_in_a_deleted_container_is_404(
    client: CosmosClient, container: ContainerProxy
) -> None:
    await container.create_item({"id": "present", "pk": "p"})
    await client.get_database_client(container.database_link.split("/")[-1]).delete_container(
        container.id
    )

    # A bare 404 (no sub-status) for all of them, the point read included: unlike Cosmos DB,
    # which marks a missing container with sub-status 1003, the server does not tell a missing
    # container from a missing item (the store reads the container to tell them apart).
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: container.read_item("present", partition_key="p"),
        lambda: container.upsert_item({"id": "new", "pk": "p"}),
        lambda: container.create_item({"id": "new", "pk": "p"}),  # 500 without the launcher fix
        container.read,
    ]
    for call in calls:
        with pytest.raises(exceptions.CosmosResourceNotFoundError) as missing:
            await call()
        assert (missing.value.status_code, missing.value.sub_status) == (404, None)
    query = container.query_items("SELECT * FROM c WHERE c.pk = 'p'", partition_key="p")
    with pytest.raises(exceptions.CosmosResourceNotFoundError):
        [item async for item in query]


async def test_upsert_is_idempotent(container: ContainerProxy) -> None:
    doc = {"id": "same", "pk": "p", "value": 1}
    await container.upsert_item(doc)
    await container.upsert_item(doc)
    await container.upsert_item({**doc, "value": 2})

    rows = [
        row
        async for row in container.query_items(
            "SELECT * FROM c WHERE c.pk = @pk", parameters=[{"name": "@pk", "value": "p"}]
        )
    ]

    assert [(r["id"], r["value"]) for r in rows] == [("same", 2)]


async def test_query_pages_with_continuation_tokens(container: ContainerProxy) -> None:
    for i in range(25):
        await container.upsert_item({"id": f"d{i:02d}", "pk": "app:day", "n": i})
    query = "SELECT * FROM c WHERE c.pk = 'app:day' ORDER BY c.n"

    pager = container.query_items(query, partition_key="app:day", max_item_count=10).by_page()
    first = [row async for row in await pager.__anext__()]
    token = pager.continuation_token
    assert [r["n"] for r in first] == list(range(10))
    assert token

    resumed = container.query_items(query, partition_key="app:day", max_item_count=10).by_page(
        token
    )
    rest: list[int] = []
    sizes: list[int] = []
    async for page in resumed:
        items = [row["n"] async for row in page]
        sizes.append(len(items))
        rest.extend(items)
    assert rest == list(range(10, 25))
    assert sizes == [10, 5]


async def test_cross_partition_distinct_value_lists_each_value_once(
    container: ContainerProxy,
) -> None:
    # The launcher's addition: the query library has no DISTINCT.
    for i in range(12):
        await container.upsert_item(
            {"id": f"d{i}", "pk": f"app-{i % 3}:day", "app": f"app-{i % 3}", "n": i}
        )
    query = "SELECT DISTINCT VALUE c.app FROM c WHERE c.n % 3 != 0"

    values = [v async for v in container.query_items(query, max_item_count=2)]

    assert sorted(values) == ["app-1", "app-2"]


async def test_patch_item(container: ContainerProxy) -> None:
    await container.create_item({"id": "w", "pk": "p", "count": 1, "status": "open"})

    patched = await container.patch_item(
        "w",
        partition_key="p",
        patch_operations=[
            {"op": "incr", "path": "/count", "value": 2},
            {"op": "set", "path": "/status", "value": "done"},
            {"op": "add", "path": "/note", "value": "x"},
        ],
    )

    assert (patched["count"], patched["status"], patched["note"]) == (3, "done", "x")
    assert (await container.read_item("w", partition_key="p"))["count"] == 3


async def test_etag_match_conditions(container: ContainerProxy) -> None:
    first = await container.create_item({"id": "c", "pk": "p", "v": 1})
    second = await container.replace_item(
        "c",
        {"id": "c", "pk": "p", "v": 2},
        etag=first["_etag"],
        match_condition=MatchConditions.IfNotModified,
    )
    assert second["_etag"] != first["_etag"]

    with pytest.raises(exceptions.CosmosAccessConditionFailedError) as stale:
        await container.replace_item(
            "c",
            {"id": "c", "pk": "p", "v": 3},
            etag=first["_etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    assert stale.value.status_code == 412
    with pytest.raises(exceptions.CosmosAccessConditionFailedError):
        await container.upsert_item(
            {"id": "c", "pk": "p", "v": 4},
            etag=first["_etag"],
            match_condition=MatchConditions.IfNotModified,
        )
    assert (await container.read_item("c", partition_key="p"))["v"] == 2


async def test_transactional_batch_upsert_and_read(container: ContainerProxy) -> None:
    await container.create_item({"id": "a", "pk": "p", "v": 1})

    results = await container.execute_item_batch(
        [
            ("upsert", ({"id": "a", "pk": "p", "v": 2},)),
            ("upsert", ({"id": "b", "pk": "p", "v": 1},)),
            ("read", ("a",)),
        ],
        partition_key="p",
    )

    assert [r["statusCode"] for r in results] == [200, 201, 200]
    assert results[2]["resourceBody"]["v"] == 2
    assert (await container.read_item("b", partition_key="p"))["v"] == 1
