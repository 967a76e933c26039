"""Contract tests of the test broker's Service Bus half, driven through the real, unmodified
azure-servicebus 7.15 aio SDK over TCP.

One client is shared by the module (every link open costs the SDK about a second); each test
uses its own entities (named `sbc-*`: the broker is shared by the whole session) so they do
not interfere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from azure.servicebus import ServiceBusMessage, ServiceBusReceiveMode, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessageLockLostError, MessagingEntityNotFoundError

from tests.emulators.amqp.servicebus import ServiceBusAdmin
from tests.integration.emulators.servicebus_helpers import receive_until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")
WAIT_S = 10.0


async def eventually(fetch: Callable[[], Awaitable[T]], ok: Callable[[T], bool]) -> T:
    """Poll `fetch` until `ok(result)` or the deadline; returns the last result."""
    deadline = time.monotonic() + WAIT_S
    result = await fetch()
    while not ok(result) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        result = await fetch()
    return result


async def receive(receiver: ServiceBusReceiver, count: int, wait_s: float = WAIT_S) -> list[Any]:
    return await receive_until(receiver, count, wait_s)


def body_text(message: Any) -> str:
    return b"".join(message.body).decode()


async def test_topic_single_and_batch_send_reach_only_matching_subscriptions(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_topic("sbc-alerts")
    sb.create_subscription("sbc-alerts", "critical", filter={"severity": "critical"})
    sb.create_subscription("sbc-alerts", "drift-a", filter={"sys.subject": "drift", "app_id": "a"})
    sb.create_subscription("sbc-alerts", "all")

    async with client.get_topic_sender("sbc-alerts") as sender:
        await sender.send_messages(
            ServiceBusMessage(
                "one",
                message_id="m1",
                subject="drift",
                application_properties={"severity": "critical", "app_id": "a"},
            )
        )
        batch = await sender.create_message_batch()
        batch.add_message(
            ServiceBusMessage(
                "two",
                message_id="m2",
                subject="latency",
                application_properties={"severity": "warning", "app_id": "a"},
            )
        )
        batch.add_message(
            ServiceBusMessage(
                "three",
                message_id="m3",
                subject="drift",
                correlation_id="c-3",
                application_properties={"severity": "critical", "app_id": "b"},
            )
        )
        await sender.send_messages(batch)

    async with client.get_subscription_receiver("sbc-alerts", "critical") as receiver:
        got = await receive(receiver, 2)
        assert [m.message_id for m in got] == ["m1", "m3"]
        assert [body_text(m) for m in got] == ["one", "three"]
        assert got[1].correlation_id == "c-3"
        assert got[1].subject == "drift"
        assert got[1].application_properties[b"app_id"] == b"b"
        assert [m.sequence_number for m in got] == [1, 3]
        assert all(m.delivery_count == 0 for m in got)
        assert all(m.enqueued_time_utc is not None for m in got)
        for message in got:
            await receiver.complete_message(message)
        # Nothing else was routed here.
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []

    async with client.get_subscription_receiver("sbc-alerts", "drift-a") as receiver:
        got = await receive(receiver, 1)
        assert [m.message_id for m in got] == ["m1"]
        await receiver.complete_message(got[0])
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []

    assert sb.servicebus_counts("sbc-alerts/Subscriptions/all")["active"] == 3
    assert sb.servicebus_counts("sbc-alerts/Subscriptions/critical")["active"] == 0


async def test_queue_send_peek_lock_complete_and_receive_and_delete(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-work")
    async with client.get_queue_sender("sbc-work") as sender:
        await sender.send_messages([ServiceBusMessage(f"job-{i}") for i in range(3)])
        # Larger than a frame both ways: multi-frame transfers in and out.
        await sender.send_messages(ServiceBusMessage("b" * 300_000))

    async with client.get_queue_receiver("sbc-work") as receiver:
        [first] = await receive(receiver, 1)
        assert body_text(first) == "job-0"
        assert first.lock_token is not None
        assert first.locked_until_utc is not None
        assert first.locked_until_utc > datetime.now(UTC)
        peeked = await receiver.peek_messages(10, sequence_number=1)
        assert [body_text(m)[:5] for m in peeked] == ["job-0", "job-1", "job-2", "bbbbb"]
        await receiver.complete_message(first)
    counts = await eventually(
        lambda: asyncio.to_thread(sb.servicebus_counts, "sbc-work"), lambda c: c["locked"] == 0
    )
    assert counts == {"active": 3, "locked": 0, "deferred": 0, "dead_lettered": 0}

    async with client.get_queue_receiver(
        "sbc-work", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        got = await receive(receiver, 3)
        assert [body_text(m) for m in got] == ["job-1", "job-2", "b" * 300_000]
        assert all(m.lock_token is None for m in got)
    assert sb.servicebus_counts("sbc-work")["active"] == 0


async def test_abandon_redelivers_with_incremented_delivery_count(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-abandon")
    async with client.get_queue_sender("sbc-abandon") as sender:
        await sender.send_messages(ServiceBusMessage("x", message_id="a-1"))
    async with client.get_queue_receiver("sbc-abandon") as receiver:
        [first] = await receive(receiver, 1)
        assert first.delivery_count == 0
        await receiver.abandon_message(first)
        [second] = await receive(receiver, 1)
        assert second.message_id == "a-1"
        assert second.delivery_count == 1
        assert second.lock_token != first.lock_token
        await receiver.complete_message(second)
    assert sb.servicebus_counts("sbc-abandon")["active"] == 0


async def test_dead_letter_with_reason_then_read_from_dead_letter_queue(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_topic("sbc-dl-topic")
    sb.create_subscription("sbc-dl-topic", "sub")
    async with client.get_topic_sender("sbc-dl-topic") as sender:
        await sender.send_messages(ServiceBusMessage("poison", message_id="p-1"))
    async with client.get_subscription_receiver("sbc-dl-topic", "sub") as receiver:
        [message] = await receive(receiver, 1)
        await receiver.dead_letter_message(
            message, reason="bad-shape", error_description="field x is missing"
        )
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    async with client.get_subscription_receiver(
        "sbc-dl-topic", "sub", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        [dead] = await receive(dlq, 1)
        assert dead.message_id == "p-1"
        assert body_text(dead) == "poison"
        assert dead.dead_letter_reason == "bad-shape"
        assert dead.dead_letter_error_description == "field x is missing"
        await dlq.complete_message(dead)
    assert sb.servicebus_counts("sbc-dl-topic/Subscriptions/sub")["dead_lettered"] == 0


async def test_lock_expiry_redelivers_and_old_lock_is_lost(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-expiry", lock_duration_s=1.0)
    async with client.get_queue_sender("sbc-expiry") as sender:
        await sender.send_messages(ServiceBusMessage("slow", message_id="e-1"))
    async with client.get_queue_receiver("sbc-expiry") as receiver:
        [first] = await receive(receiver, 1)
        # No settlement: the broker's timer must hand the message out again by itself.
        [second] = await receive(receiver, 1)
        assert second.message_id == "e-1"
        assert second.delivery_count == 1
        assert second.locked_until_utc > first.locked_until_utc
        with pytest.raises(MessageLockLostError):
            await receiver.complete_message(first)
        await receiver.complete_message(second)
    assert sb.servicebus_counts("sbc-expiry")["active"] == 0


async def test_max_delivery_count_dead_letters(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-retries", max_delivery_count=2)
    async with client.get_queue_sender("sbc-retries") as sender:
        await sender.send_messages(ServiceBusMessage("never works", message_id="r-1"))
    async with client.get_queue_receiver("sbc-retries") as receiver:
        for expected_count in (0, 1):
            [message] = await receive(receiver, 1)
            assert message.delivery_count == expected_count
            await receiver.abandon_message(message)
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
    async with client.get_queue_receiver(
        "sbc-retries", sub_queue=ServiceBusSubQueue.DEAD_LETTER
    ) as dlq:
        [dead] = await receive(dlq, 1)
        assert dead.message_id == "r-1"
        assert dead.dead_letter_reason == "MaxDeliveryCountExceeded"
        await dlq.complete_message(dead)


async def test_renew_lock_extends_locked_until(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-renew", lock_duration_s=1.5)
    async with client.get_queue_sender("sbc-renew") as sender:
        await sender.send_messages(ServiceBusMessage("long job", message_id="n-1"))
    async with client.get_queue_receiver("sbc-renew") as receiver:
        [message] = await receive(receiver, 1)
        original = message.locked_until_utc
        # Renew late in the lock, then outlive the original expiry while holding the lock.
        await eventually(
            lambda: asyncio.sleep(0, datetime.now(UTC)),
            lambda now: (original - now).total_seconds() < 0.7,
        )
        renewed = await receiver.renew_message_lock(message)
        assert renewed > original
        assert message.locked_until_utc == renewed
        await eventually(
            lambda: asyncio.sleep(0, datetime.now(UTC)),
            lambda now: (now - original).total_seconds() > 0.3,
        )
        counts = sb.servicebus_counts("sbc-renew")
        assert counts["locked"] == 1
        assert counts["active"] == 0
        await receiver.complete_message(message)
    assert sb.servicebus_counts("sbc-renew") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 0,
    }


async def test_duplicate_message_ids_are_suppressed(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_topic("sbc-dedupe", duplicate_window_s=600)
    sb.create_subscription("sbc-dedupe", "sub")
    async with client.get_topic_sender("sbc-dedupe") as sender:
        await sender.send_messages(ServiceBusMessage("opened", message_id="breach-1:opened"))
        await sender.send_messages(ServiceBusMessage("opened again", message_id="breach-1:opened"))
        await sender.send_messages(ServiceBusMessage("resolved", message_id="breach-1:resolved"))
    assert sb.servicebus_sent("sbc-dedupe") == (2, 1)
    async with client.get_subscription_receiver(
        "sbc-dedupe", "sub", receive_mode=ServiceBusReceiveMode.RECEIVE_AND_DELETE
    ) as receiver:
        got = await receive(receiver, 2)
        assert [body_text(m) for m in got] == ["opened", "resolved"]
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []


async def test_defer_then_receive_and_complete_by_sequence_number(
    sb: ServiceBusAdmin, client: ServiceBusClient
) -> None:
    sb.create_queue("sbc-defer")
    async with client.get_queue_sender("sbc-defer") as sender:
        await sender.send_messages(ServiceBusMessage("later", message_id="d-1"))
    async with client.get_queue_receiver("sbc-defer") as receiver:
        [message] = await receive(receiver, 1)
        sequence_number = message.sequence_number
        await receiver.defer_message(message)
        assert await receiver.receive_messages(max_message_count=1, max_wait_time=0.5) == []
        [deferred] = await receiver.receive_deferred_messages([sequence_number])
        assert deferred.message_id == "d-1"
        assert deferred.lock_token is not None
        # Deferred messages settle through the management link (update-disposition).
        await receiver.complete_message(deferred)
    assert sb.servicebus_counts("sbc-defer") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 0,
    }


async def test_receiver_on_a_missing_entity_is_refused(client: ServiceBusClient) -> None:
    with pytest.raises(MessagingEntityNotFoundError):
        async with client.get_queue_receiver("sbc-no-such-queue") as receiver:
            await receiver.receive_messages(max_message_count=1, max_wait_time=1)


def _sync_round_trip(connection_string: str) -> list[tuple[str | None, int, str | None]]:
    from azure.servicebus import ServiceBusClient as SyncClient

    seen: list[tuple[str | None, int, str | None]] = []
    with SyncClient.from_connection_string(connection_string) as sync_client:
        with sync_client.get_queue_sender("sbc-sync") as sender:
            sender.send_messages(ServiceBusMessage("s", message_id="s-1"))
        with sync_client.get_queue_receiver("sbc-sync") as receiver:
            [message] = receiver.receive_messages(max_message_count=1, max_wait_time=WAIT_S)
            seen.append((message.message_id, message.delivery_count, None))
            receiver.abandon_message(message)
            [message] = receiver.receive_messages(max_message_count=1, max_wait_time=WAIT_S)
            seen.append((message.message_id, message.delivery_count, None))
            receiver.dead_letter_message(message, reason="sync-reason")
        with sync_client.get_queue_receiver(
            "sbc-sync", sub_queue=ServiceBusSubQueue.DEAD_LETTER
        ) as dlq:
            [message] = dlq.receive_messages(max_message_count=1, max_wait_time=WAIT_S)
            seen.append((message.message_id, message.delivery_count, message.dead_letter_reason))
            dlq.complete_message(message)
    return seen


async def test_sync_client_round_trip(sb: ServiceBusAdmin) -> None:
    # The synchronous SDK drives its own pyamqp connection; run it off the event loop.
    sb.create_queue("sbc-sync")
    seen = await asyncio.to_thread(_sync_round_trip, sb.servicebus_connection_string())
    assert seen == [("s-1", 0, None), ("s-1", 1, None), ("s-1", 2, "sync-reason")]
    assert sb.servicebus_counts("sbc-sync") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 0,
    }
