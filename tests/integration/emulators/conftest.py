"""Fixtures shared by the Service Bus contract and fault tests of the AMQP test broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from azure.servicebus.aio import ServiceBusClient

from tests.emulators.amqp.servicebus import ServiceBusAdmin, install


@pytest.fixture(scope="module")
def sb(amqp_broker: Any) -> ServiceBusAdmin:
    return install(amqp_broker)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(sb: ServiceBusAdmin) -> AsyncIterator[ServiceBusClient]:
    async with ServiceBusClient.from_connection_string(sb.servicebus_connection_string()) as c:
        yield c
