"""What the tests running ``evalstream`` on the Azure backend in a child process share: its
settings over the local servers, and a wait on what it wrote."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
