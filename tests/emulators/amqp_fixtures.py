"""Pytest plugin: the session-scoped `amqp_broker` fixture (the project's AMQP test broker with
Event Hubs and, when its module is present, Service Bus entities) on an ephemeral port."""

from __future__ import annotations

import importlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.emulators.amqp.broker import Broker, BrokerThread
from tests.emulators.amqp.eventhubs import EventHubs

HOST = "127.0.0.1"
# The broker's CBS node accepts every token; the SDK only needs a well-formed key.
SAS_KEY_NAME = "RootManageSharedAccessKey"
SAS_KEY = "dGVzdC1icm9rZXIta2V5"
READY_TIMEOUT_S = 10.0


class AmqpBroker:
    """What tests get: the port, connection strings and the broker's admin API (every public
    method of the broker and its installed entity models, e.g. `create_hub`, `events`,
    `drop_connections`, `stall`, `server_busy`, `clear_faults`, `create_queue`)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def eventhubs(self) -> EventHubs:
        model = self.broker.extension("eventhubs")
        if not isinstance(model, EventHubs):
            raise TypeError(f"the broker's eventhubs extension is a {type(model).__name__}")
        return model

    def eventhubs_connection_string(self, hub: str) -> str:
        return (
            f"Endpoint=sb://{HOST}:{self.port}/;SharedAccessKeyName={SAS_KEY_NAME};"
            f"SharedAccessKey={SAS_KEY};UseDevelopmentEmulator=true;EntityPath={hub}"
        )

    def servicebus_connection_string(self) -> str:
        return (
            f"Endpoint=sb://{HOST}:{self.port}/;SharedAccessKeyName={SAS_KEY_NAME};"
            f"SharedAccessKey={SAS_KEY};UseDevelopmentEmulator=true;"
        )

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.broker, name)


def install_entities(broker: Broker) -> None:
    """Event Hubs always; Service Bus from its own module (tests/emulators/amqp/servicebus.py)."""
    EventHubs.install(broker)
    try:
        servicebus = importlib.import_module("tests.emulators.amqp.servicebus")
    except ModuleNotFoundError as exc:
        if exc.name != "tests.emulators.amqp.servicebus":
            raise
        return
    servicebus.install(broker)


def wait_until_accepting(port: int, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    last_error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((HOST, port), timeout=1.0):
                return
        except OSError as exc:
            last_error = exc
            time.sleep(0.05)
    raise RuntimeError(
        f"the AMQP test broker did not accept connections on {HOST}:{port} within {timeout} s "
        f"(last error: {last_error!r})"
    )


@pytest.fixture(scope="session")
def amqp_broker() -> Iterator[AmqpBroker]:
    runner = BrokerThread(Broker(HOST, 0), setup=install_entities)
    broker = runner.start(timeout=READY_TIMEOUT_S)
    try:
        wait_until_accepting(broker.port)
        yield AmqpBroker(broker)
    finally:
        runner.stop()
