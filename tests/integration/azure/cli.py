"""What the tests running ``evalstream`` on the Azure backend in a child process share: its
settings over the local servers, and a wait on what it wrote."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from azure.cosmos.aio import CosmosClient
from azure.cosmos.exceptions import CosmosResourceNotFoundError

from tests.emulators.npm_fixtures import CosmosServer


def azure_env(
    amqp_broker: Any,
    azurite: Any,
    cosmos_server: CosmosServer,
    *,
    hub: str,
    database: str,
    topic: str,
    user_hash_key: str = "test-key",
) -> dict[str, str]:
    """The ``EVALSTREAM_`` variables of a working Azure configuration: the event hub ``hub``
    (checkpoints in Azurite, in a container of its name; load balancing every second), Cosmos
    database ``database`` and Service Bus topic ``topic``."""
    return {
        "EVALSTREAM_BACKEND": "azure",
        "EVALSTREAM_USER_HASH_KEY": user_hash_key,
        "EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING": amqp_broker.eventhubs_connection_string(
            hub
        ),
        "EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME": hub,
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING": azurite.connection_string,
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONTAINER": hub,
        "EVALSTREAM_AZURE__EVENTHUBS__LOAD_BALANCING_INTERVAL_S": "1",
        "EVALSTREAM_AZURE__COSMOS__ENDPOINT": cosmos_server.endpoint,
        "EVALSTREAM_AZURE__COSMOS__KEY": cosmos_server.key,
        "EVALSTREAM_AZURE__COSMOS__DATABASE": database,
        "EVALSTREAM_AZURE__SERVICEBUS__CONNECTION_STRING": (
            amqp_broker.servicebus_connection_string()
        ),
        "EVALSTREAM_AZURE__SERVICEBUS__TOPIC": topic,
    }


def wait_for(condition: Callable[[], bool], what: str, output: Path, timeout: float = 120) -> None:
    """Until ``condition`` holds; else fail showing the command's ``output`` file."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s\n{output.read_text()}")
        time.sleep(0.1)


def cosmos_database(server: CosmosServer, prefix: str) -> Iterator[str]:
    """A fresh database name (the processor creates it), dropped afterwards (a fixture's body)."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"
    yield name

    async def drop() -> None:
        async with CosmosClient(server.endpoint, server.key) as client:
            with contextlib.suppress(CosmosResourceNotFoundError):  # the test failed early
                await client.delete_database(name)

    asyncio.run(drop())


def telemetry_count(server: CosmosServer, database: str) -> int:
    """Documents in the database's telemetry container; -1 before it is created."""

    async def count() -> int:
        async with CosmosClient(server.endpoint, server.key) as client:
            container = client.get_database_client(database).get_container_client("telemetry")
            query = "SELECT VALUE COUNT(1) FROM c"
            found: list[Any] = [n async for n in container.query_items(query)]
            return int(found[0])

    try:
        return asyncio.run(count())
    except CosmosResourceNotFoundError:
        return -1
