"""Fault tests of the test broker's Service Bus half with the real azure-servicebus aio SDK:
dropped connections, server-busy and lost locks must be survivable the way they are on
Azure (the SDK reconnects and retries; locks outlive links; nothing is lost or duplicated).

Entities are named `sbf-*` (the broker is shared by the whole session).
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError

from tests.emulators.amqp.servicebus import ServiceBusAdmin
from tests.integration.emulators.servicebus_helpers import receive_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

WAIT_S = 20.0


@pytest.fixture(autouse=True)
def no_faults_left(amqp_broker: Any, sb: ServiceBusAdmin) -> Any:
    yield
    amqp_broker.clear_faults()
    sb.servicebus_lose_locks(False)
    sb.servicebus_pause_deliveries(False)
    # The SDK leaves its dead connections as cyclic garbage. If a later GC pass collects them
    # in the middle of an ast.parse (pytest's assertion rewriting of a lazily imported
    # module), CPython 3.11.7 raises "SystemError: AST constructor recursion depth mismatch"
    # (seen with the hypothesis plugin at session end). Collect them here instead.
    gc.collect()


async def receive(receiver: ServiceBusReceiver, count: int, wait_s: float = WAIT_S) -> list[Any]:
    return await receive_until(receiver, count, wait_s)


async def test_sender_and_receiver_recover_after_connections_are_dropped(
    amqp_broker: Any, sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbf-drop", lock_duration_s=10.0)
    async with (
        client.get_queue_sender("sbf-drop") as sender,
        client.get_queue_receiver("sbf-drop") as receiver,
    ):
        await sender.send_messages(ServiceBusMessage("before", message_id="d-1"))
        [settle_later] = await receive(receiver, 1)
        await sender.send_messages(ServiceBusMessage("in flight", message_id="d-2"))
        [abandoned_by_drop] = await receive(receiver, 1)
        assert abandoned_by_drop.message_id == "d-2"

        assert amqp_broker.drop_connections() >= 2

        # The sender reconnects by itself; the message is stored exactly once.
        await sender.send_messages(ServiceBusMessage("after", message_id="d-3"))
        assert sb.servicebus_sent("sbf-drop") == (3, 0)

        # A lock taken before the drop is still valid: settling falls back to the
        # management link and removes the message.
        await receiver.complete_message(settle_later)

        # The receiver reconnects, gets the new message, and gets the message whose link
        # died with the connection again once its lock expired, with one more delivery.
        got = await receive(receiver, 2)
        by_id = {m.message_id: m for m in got}
        assert sorted(by_id) == ["d-2", "d-3"]
        assert by_id["d-2"].delivery_count == 1
        assert by_id["d-3"].delivery_count == 0
        for message in got:
            await receiver.complete_message(message)
    assert sb.servicebus_counts("sbf-drop") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 0,
    }


async def test_server_busy_send_is_retried_without_duplicates(
    amqp_broker: Any, sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbf-busy")
    async with client.get_queue_sender("sbf-busy") as sender:
        await sender.send_messages(ServiceBusMessage("warm-up", message_id="b-0"))
        amqp_broker.server_busy(1.0)
        started = time.monotonic()
        await sender.send_messages(ServiceBusMessage("while busy", message_id="b-1"))
        # The first attempt was refused, so the accepted send came from a retry.
        assert time.monotonic() - started >= 0.5
    assert sb.servicebus_sent("sbf-busy") == (2, 0)
    assert sb.servicebus_counts("sbf-busy")["active"] == 2


async def test_lost_lock_is_reported_and_the_message_comes_back(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbf-lock", lock_duration_s=1.0)
    async with client.get_queue_sender("sbf-lock") as sender:
        await sender.send_messages(ServiceBusMessage("fragile", message_id="l-1"))
    async with client.get_queue_receiver("sbf-lock") as receiver:
        [message] = await receive(receiver, 1)
        sb.servicebus_lose_locks(True)
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(message)
        sb.servicebus_lose_locks(False)
        [again] = await receive(receiver, 1)
        assert again.message_id == "l-1"
        assert again.delivery_count == 1
        await receiver.complete_message(again)


async def test_stalled_broker_delays_but_does_not_lose_deliveries(
    amqp_broker: Any, sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbf-stall")
    async with (
        client.get_queue_sender("sbf-stall") as sender,
        client.get_queue_receiver("sbf-stall") as receiver,
    ):
        await sender.send_messages(ServiceBusMessage("first", message_id="s-1"))
        [first] = await receive(receiver, 1)
        await receiver.complete_message(first)
        amqp_broker.stall(1.0)
        started = time.monotonic()
        send = asyncio.create_task(
            sender.send_messages(ServiceBusMessage("second", message_id="s-2"))
        )
        got = await receive(receiver, 1)
        await send
        assert [m.message_id for m in got] == ["s-2"]
        assert time.monotonic() - started >= 0.9
        await receiver.complete_message(got[0])
    assert sb.servicebus_sent("sbf-stall") == (2, 0)


async def test_paused_deliveries_wait_and_resume(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbf-pause")
    async with (
        client.get_queue_sender("sbf-pause") as sender,
        client.get_queue_receiver("sbf-pause") as receiver,
    ):
        sb.servicebus_pause_deliveries(True)
        try:
            await sender.send_messages(ServiceBusMessage("held", message_id="h-1"))
            assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
            assert sb.servicebus_counts("sbf-pause")["active"] == 1
        finally:
            sb.servicebus_pause_deliveries(False)
        [message] = await receive(receiver, 1)
        assert message.message_id == "h-1"
        assert message.delivery_count == 0
        await receiver.complete_message(message)
