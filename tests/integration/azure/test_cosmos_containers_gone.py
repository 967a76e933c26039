"""Cosmos containers deleted under the store's reads, against cosmosdb-server: a missing
container is an error, never "no snapshot" or "no document"."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.cosmos.aio import CosmosClient

from store.cosmos import CosmosStore
from store.exceptions import ContainerNotFound
from store.ports import StateSnapshot
from tests.emulators.npm_fixtures import CosmosServer

pytestmark = pytest.mark.integration

START = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
async def database(cosmos_server: CosmosServer) -> AsyncIterator[str]:
    name = f"gone-{uuid.uuid4().hex[:12]}"
    yield name
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
        await client.delete_database(name)


async def delete_container(server: CosmosServer, database: str, name: str) -> None:
    async with CosmosClient(server.endpoint, server.key) as client:
        await client.get_database_client(database).delete_container(name)


async def test_a_deleted_state_container_is_an_error_not_a_missing_snapshot(
    cosmos_server: CosmosServer, database: str
) -> None:
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        await store.save_state(StateSnapshot("$Default", "0", 41, b"detectors"))
        assert await store.load_state("$Default", "1") is None  # no snapshot: a fresh partition

        await delete_container(cosmos_server, database, "state")

        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.load_state("$Default", "0")
        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.load_state("$Default", "1")
        with pytest.raises(ContainerNotFound, match="container 'state'"):
            await store.save_state(StateSnapshot("$Default", "0", 42, b"detectors"))


async def test_a_deleted_telemetry_container_is_an_error_not_a_missing_document(
    cosmos_server: CosmosServer, database: str
) -> None:
    async with CosmosStore(cosmos_server.endpoint, cosmos_server.key, database=database) as store:
        assert await store.get_telemetry("nothing", "a:2026-11-21") is None
        await delete_container(cosmos_server, database, "telemetry")

        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            await store.get_telemetry("nothing", "a:2026-11-21")
        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            await store.count("telemetry")
        with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
            async for _ in store.telemetry_window(["a"], START, START + timedelta(hours=1)):
                pass
