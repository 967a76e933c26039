"""The Service Bus alert adapter (alerts/servicebus*.py) over the real azure-servicebus aio SDK,
against the project's AMQP test broker: routing by correlation filters, duplicate detection,
the real AlertListener (dead-lettering, lock renewal), and publishing through an outage.

The broker is shared by the whole session: entities here are named `sba-*`. One publisher is
shared by the module (each SDK link open costs about a second here).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from azure.servicebus import ServiceBusMessage
from azure.servicebus.aio import ServiceBusClient
from pydantic import SecretStr

from alerts.config import SubscriptionSpec
from alerts.exceptions import (
    AlertBusError,
    AlertClientClosedError,
    LockLostError,
    UnknownSubscriptionError,
)
from alerts.listener import AlertListener
from alerts.ports import INVALID_BODY, DeadLetteredAlert, ReceivedAlert
from alerts.servicebus import CONTENT_TYPE, correlation_filter
from alerts.servicebus_config import ServiceBusSettings
from alerts.servicebus_publisher import ServiceBusAlertPublisher, servicebus_publisher
from alerts.servicebus_receiver import ServiceBusAlertReceiver, servicebus_receiver
from common.retry import Backoff
from schemas import Breach, BreachKind, BreachState, Severity
from tests.emulators.amqp.servicebus import ServiceBusAdmin, install
from tests.unit.alerts.factories import make_breach

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

T = TypeVar("T")
WAIT_S = 20.0
OUTAGE_S = 10.0
# Every test publishes to its own topic; the module's publisher is bound to one topic, so
# tests that need another build a publisher of their own.
TOPIC = "sba-alerts"


@pytest.fixture(scope="module")
def sb(amqp_broker: Any) -> ServiceBusAdmin:
    return install(amqp_broker)


def settings_for(sb: ServiceBusAdmin, topic: str) -> ServiceBusSettings:
    return ServiceBusSettings(
        connection_string=SecretStr(sb.servicebus_connection_string()), topic=topic
    )


def provision(sb: ServiceBusAdmin, topic: str, *specs: SubscriptionSpec) -> None:
    """What Bicep does on Azure: the topic and one subscription per spec."""
    sb.create_topic(topic)
    for spec in specs:
        sb.create_subscription(
            topic,
            spec.name,
            filter=correlation_filter(spec),
            max_delivery_count=spec.max_delivery_count,
            lock_duration_s=spec.lock_duration_s,
        )


ALL = SubscriptionSpec("all")
CRITICAL = SubscriptionSpec("critical", filter={"severity": "critical"})
DRIFT_A = SubscriptionSpec("drift-a", filter={"app_id": "a", "kind": "drift"})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def publisher(sb: ServiceBusAdmin) -> AsyncIterator[ServiceBusAlertPublisher]:
    provision(sb, TOPIC, ALL, CRITICAL, DRIFT_A)
    async with servicebus_publisher(settings_for(sb, TOPIC)) as opened:
        yield opened
    gc.collect()  # see no_faults_left


@pytest.fixture(autouse=True)
def no_faults_left(amqp_broker: Any) -> Iterator[None]:
    yield
    amqp_broker.clear_faults()
    # The SDK leaves dead connections as cyclic garbage; collecting it here keeps a later GC
    # pass out of pytest's assertion rewriting (CPython 3.11.7 AST SystemError, see
    # tests/integration/emulators/test_servicebus_faults.py).
    gc.collect()


async def eventually(check: Callable[[], T], timeout: float = WAIT_S) -> T:
    """Poll ``check`` until it returns something truthy; fail with the last value."""
    return await eventually_async(lambda: _ready(check()), timeout)


async def _ready(value: T) -> T:
    return value


async def eventually_async(check: Callable[[], Awaitable[T]], timeout: float = WAIT_S) -> T:
    """``eventually`` for a check that has to await (a peek at the dead-letter queue)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            assert result, f"condition not met within {timeout} s (last: {result!r})"
            return result
        await asyncio.sleep(0.05)


async def receive_all(
    receiver: ServiceBusAlertReceiver, count: int, wait_s: float = WAIT_S
) -> list[ReceivedAlert]:
    """Receive until ``count`` alerts arrived or ``wait_s`` passed."""
    got: list[ReceivedAlert] = []
    deadline = time.monotonic() + wait_s
    while len(got) < count and time.monotonic() < deadline:
        got += await receiver.receive(count - len(got), max(deadline - time.monotonic(), 0.1))
    return got


async def nothing_more(receiver: ServiceBusAlertReceiver) -> bool:
    return await receiver.receive(10, 0.5) == []


def routing_sample() -> list[Breach]:
    return [
        make_breach(1, app_id="a", kind=BreachKind.DRIFT, severity=Severity.CRITICAL),
        make_breach(2, app_id="a", kind=BreachKind.DRIFT, severity=Severity.WARNING),
        make_breach(3, app_id="a", kind=BreachKind.LATENCY, severity=Severity.CRITICAL),
        make_breach(4, app_id="b", kind=BreachKind.DRIFT, severity=Severity.WARNING),
        make_breach(5, app_id="b", kind=BreachKind.ERROR_RATE, severity=Severity.CRITICAL),
    ]


async def test_filtered_subscriptions_get_exactly_their_breaches_once(
    sb: ServiceBusAdmin, publisher: ServiceBusAlertPublisher
) -> None:
    breaches = routing_sample()
    await publisher.publish(breaches)
    # Published again (a processor retrying a batch): duplicate detection drops all five.
    await publisher.publish(breaches)
    # The same breach resolved is a new message id: delivered.
    resolved = breaches[0].model_copy(update={"state": BreachState.RESOLVED})
    await publisher.publish([resolved])
    assert sb.servicebus_sent(TOPIC) == (6, 5)

    expected = {
        spec.name: [b.message_id for b in [*breaches, resolved] if spec.matches(b)]
        for spec in (ALL, CRITICAL, DRIFT_A)
    }
    assert expected["critical"] == [
        "breach-00001:opened",
        "breach-00003:opened",
        "breach-00005:opened",
        "breach-00001:resolved",
    ]
    assert expected["drift-a"] == [
        "breach-00001:opened",
        "breach-00002:opened",
        "breach-00001:resolved",
    ]
    settings = settings_for(sb, TOPIC)
    for spec in (ALL, CRITICAL, DRIFT_A):
        async with servicebus_receiver(settings, spec) as receiver:
            got = await receive_all(receiver, len(expected[spec.name]))
            assert [a.message_id for a in got] == expected[spec.name], spec.name
            by_id = {b.message_id: b for b in [*breaches, resolved]}
            now = datetime.now(UTC)
            for alert in got:
                assert alert.breach == by_id[alert.message_id]
                assert alert.delivery_count == 1
                assert alert.enqueued_time <= now
                assert alert.locked_until > now
                await receiver.complete(alert)
            assert await nothing_more(receiver)
            # A settled alert cannot be settled again.
            with pytest.raises(LockLostError):
                await receiver.complete(got[0])


def _stored(sb: ServiceBusAdmin, path: str) -> list[Any]:
    return list(sb.servicebus_peek(path))


async def test_message_shape_subject_properties_and_content_type(
    sb: ServiceBusAdmin, publisher: ServiceBusAlertPublisher
) -> None:
    # A subscription of its own on the module's topic, filtering on a state nobody else uses.
    sb.create_subscription(TOPIC, "shape", filter={"app_id": "shape-app"})
    breach = make_breach(90, app_id="shape-app", kind=BreachKind.EVALUATION)
    await publisher.publish([breach])
    [stored] = await eventually(lambda: _stored(sb, f"{TOPIC}/Subscriptions/shape"))
    assert stored.message_id == breach.message_id == "breach-00090:opened"
    assert stored.subject == "evaluation"
    assert stored.content_type == CONTENT_TYPE
    assert stored.application_properties == {
        "app_id": "shape-app",
        "severity": "warning",
        "kind": "evaluation",
        "state": "opened",
    }


async def test_large_publish_is_split_into_batches(
    sb: ServiceBusAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    # No subscription: Service Bus accepts and drops; the topic's counters are the witness.
    sb.create_topic("sba-split")
    breaches = [make_breach(n).model_copy(update={"message": "m" * 500}) for n in range(1500)]
    size = len(breaches[0].model_dump_json())
    assert size * len(breaches) > 1024 * 1024  # more than one 1 MB batch
    caplog.set_level(logging.DEBUG, logger="alerts.servicebus_publisher")
    async with servicebus_publisher(settings_for(sb, "sba-split")) as split_publisher:
        await split_publisher.publish(breaches)
    assert sb.servicebus_sent("sba-split") == (1500, 0)
    [record] = [r for r in caplog.records if r.getMessage() == "published alerts"]
    assert record.count == 1500  # type: ignore[attr-defined]
    assert record.batches >= 2  # type: ignore[attr-defined]


async def test_unknown_subscription_and_closed_clients(
    sb: ServiceBusAdmin, publisher: ServiceBusAlertPublisher
) -> None:
    receiver = servicebus_receiver(settings_for(sb, TOPIC), SubscriptionSpec("not-provisioned"))
    started = time.monotonic()
    with pytest.raises(UnknownSubscriptionError, match=r"not-provisioned.*provisioned"):
        async with receiver:
            pass
    # Refused at once, not retried with backoff as if the bus were unreachable;
    # the bound leaves room for a loaded 2-core machine.
    assert time.monotonic() - started < 15.0
    with pytest.raises(AlertClientClosedError):
        await receiver.receive(1, 0.1)
    with pytest.raises(AlertClientClosedError):
        async with receiver:
            pass

    closed = servicebus_publisher(settings_for(sb, TOPIC))
    with pytest.raises(AlertClientClosedError):
        await closed.publish([make_breach(1)])
    with pytest.raises(AlertBusError, match="connection_string or"):
        servicebus_publisher(ServiceBusSettings(topic=TOPIC))


class FailingFor:
    """Handler: fails every alert of ``poison_app``, records the others."""

    def __init__(self, poison_app: str) -> None:
        self.poison_app = poison_app
        self.handled: list[str] = []
        self.failures = 0

    async def handle(self, alert: ReceivedAlert) -> None:
        if alert.breach.app_id == self.poison_app:
            self.failures += 1
            raise RuntimeError(f"webhook for {self.poison_app} answered 503")
        self.handled.append(alert.message_id)


@contextlib.asynccontextmanager
async def running(listener: AlertListener) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(listener.run())
    try:
        yield task
    finally:
        listener.stop()
        async with asyncio.timeout(WAIT_S):
            await task


async def test_listener_dead_letters_a_poison_alert_while_others_flow(sb: ServiceBusAdmin) -> None:
    spec = SubscriptionSpec("pager", max_delivery_count=3, lock_duration_s=5.0)
    provision(sb, "sba-listen", spec)
    settings = settings_for(sb, "sba-listen")
    poison = make_breach(100, app_id="poison")
    good = [make_breach(n, app_id="fine") for n in range(101, 106)]
    handler = FailingFor("poison")
    async with (
        servicebus_publisher(settings) as topic_publisher,
        servicebus_receiver(settings, spec) as receiver,
        ServiceBusClient.from_connection_string(sb.servicebus_connection_string()) as raw,
    ):
        await topic_publisher.publish([poison, *good[:2]])
        # Something that is not a Breach, written by another tool.
        async with raw.get_topic_sender("sba-listen") as foreign:
            await foreign.send_messages(ServiceBusMessage(b"{not json", message_id="foreign-1"))
        listener = AlertListener(
            receiver,
            handler,
            max_delivery_count=spec.max_delivery_count,
            backoff=Backoff(initial_s=0.05, max_s=0.2, jitter_fraction=0.1),
        )
        async with running(listener):
            # Alerts published while the poison alert is being retried still flow.
            await eventually(lambda: handler.failures >= 1)
            await topic_publisher.publish(good[2:])
            await eventually(lambda: listener.dead_lettered == 1 and len(handler.handled) == 5)
        assert sorted(handler.handled) == sorted(b.message_id for b in good)
        assert handler.failures == spec.max_delivery_count
        assert listener.abandoned == spec.max_delivery_count - 1
        assert listener.completed == 5

        dead = await eventually_async(lambda: _two_dead_letters(receiver))
        by_id = {d.message_id: d for d in dead}
        assert sorted(by_id) == ["breach-00100:opened", "foreign-1"]
        failed = by_id["breach-00100:opened"]
        assert failed.breach == poison
        assert failed.reason == "RuntimeError"
        assert "webhook for poison answered 503" in failed.description
        assert "delivery 3 of 3" in failed.description
        assert failed.delivery_count == 3
        assert failed.raw is None
        foreign_dead = by_id["foreign-1"]
        assert foreign_dead.reason == INVALID_BODY
        assert foreign_dead.breach is None
        assert foreign_dead.raw == b"{not json"
        assert "Invalid JSON" in foreign_dead.description
        # Peeking does not remove: a second look sees the same.
        assert [d.message_id for d in await receiver.dead_letters()] == [d.message_id for d in dead]
        assert [d.message_id for d in await receiver.dead_letters(max_count=1)] == [
            dead[0].message_id
        ]
    assert sb.servicebus_counts("sba-listen/Subscriptions/pager") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 2,
    }


async def _two_dead_letters(receiver: ServiceBusAlertReceiver) -> list[DeadLetteredAlert]:
    dead = await receiver.dead_letters()
    return dead if len(dead) == 2 else []


class Slow:
    """Handler that takes longer than the lock duration."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.calls: list[ReceivedAlert] = []
        self.done = 0

    async def handle(self, alert: ReceivedAlert) -> None:
        self.calls.append(alert)
        await asyncio.sleep(self.seconds)
        self.done += 1


async def test_lock_is_renewed_for_a_slow_handler(sb: ServiceBusAdmin) -> None:
    spec = SubscriptionSpec("slow", lock_duration_s=3.0)
    provision(sb, "sba-slow", spec)
    settings = settings_for(sb, "sba-slow")
    handler = Slow(7.0)
    async with (
        servicebus_publisher(settings) as topic_publisher,
        servicebus_receiver(settings, spec) as receiver,
    ):
        await topic_publisher.publish([make_breach(200)])
        listener = AlertListener(receiver, handler, max_delivery_count=spec.max_delivery_count)
        async with running(listener):
            await eventually(lambda: listener.completed == 1)
        # The lock would have expired 4 s before the handler finished: only renewals kept
        # it, so the alert was delivered once and completed without a redelivery. (3 s locks:
        # a renewal may come a second late on a loaded machine and still be in time.)
        assert len(handler.calls) == 1
        assert handler.calls[0].delivery_count == 1
        assert listener.abandoned == listener.dead_lettered == 0
        assert await receiver.dead_letters() == []
    assert sb.servicebus_counts("sba-slow/Subscriptions/slow") == {
        "active": 0,
        "locked": 0,
        "deferred": 0,
        "dead_lettered": 0,
    }


async def test_renew_and_settle_after_the_lock_expired_raise_lock_lost(
    sb: ServiceBusAdmin,
) -> None:
    spec = SubscriptionSpec("expiring", lock_duration_s=2.0)
    provision(sb, "sba-expire", spec)
    settings = settings_for(sb, "sba-expire")
    async with (
        servicebus_publisher(settings) as topic_publisher,
        servicebus_receiver(settings, spec) as receiver,
    ):
        await topic_publisher.publish([make_breach(300)])
        [alert] = await receive_all(receiver, 1)
        renewed = await receiver.renew_lock(alert)
        assert renewed > alert.locked_until
        # Poll the lock away rather than sleeping a guessed time.
        await eventually(
            lambda: sb.servicebus_counts("sba-expire/Subscriptions/expiring")["locked"] == 0
        )
        with pytest.raises(LockLostError):
            await receiver.renew_lock(alert)
        [again] = await receive_all(receiver, 1)
        assert again.message_id == alert.message_id
        assert again.delivery_count == 2
        with pytest.raises(LockLostError):
            await receiver.complete(alert)
        await receiver.abandon(again)
        [third] = await receive_all(receiver, 1)
        assert third.delivery_count == 3
        await receiver.complete(third)


async def test_publish_rides_out_a_10_s_outage_and_delivers_exactly_once(
    amqp_broker: Any, sb: ServiceBusAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    """Connections dropped, then server-busy for the first half of the outage and a stalled
    broker (nothing read or answered) for the second half, with the default retry policy."""
    spec = SubscriptionSpec("all")
    provision(sb, "sba-outage", spec)
    settings = settings_for(sb, "sba-outage")
    first, *during = [make_breach(n) for n in range(400, 404)]
    caplog.set_level(logging.WARNING, logger="alerts.servicebus_publisher")
    loop = asyncio.get_running_loop()
    async with servicebus_publisher(settings) as topic_publisher:
        await topic_publisher.publish([first])
        busy_before = amqp_broker.fault_count("server_busy_attach")
        amqp_broker.server_busy(OUTAGE_S / 2)
        amqp_broker.drop_connections()
        started = time.monotonic()
        stall = loop.call_later(OUTAGE_S / 2, amqp_broker.stall, OUTAGE_S / 2)
        try:
            await topic_publisher.publish(during)
        finally:
            stall.cancel()
        took = time.monotonic() - started
    # Nothing could get through before the outage ended: the publish retried until then.
    assert took >= OUTAGE_S - 0.5
    assert amqp_broker.fault_count("server_busy_attach") > busy_before
    # Retried, and said once as it started and once as it ended, not at each retry.
    said = [r.getMessage() for r in caplog.records]
    failing = [m for m in said if m.startswith("breach publishes failing: sending breaches")]
    [ended] = [m for m in said if m.startswith("breach publishes succeed again, after ")]
    assert failing and said == [*failing, ended]
    # One line per cause (a reset connection, a refused link, a stall), not one per failure.
    causes = [m.split(" (topic 'sba-outage')")[0] for m in failing]
    assert len(set(causes)) == len(causes)
    async with servicebus_receiver(settings, spec) as receiver:
        got = await receive_all(receiver, 4)
        for alert in got:
            await receiver.complete(alert)
        assert await nothing_more(receiver)
    assert sorted(a.message_id for a in got) == sorted(b.message_id for b in [first, *during])
    assert all(a.delivery_count == 1 for a in got)
    # Attempts that timed out during the stall may have landed after it; they are counted as
    # duplicates by the topic and delivered to nobody.
    accepted, _duplicates = sb.servicebus_sent("sba-outage")
    assert accepted == 4


async def test_publish_gives_up_with_a_retryable_error_then_succeeds_on_repeat(
    amqp_broker: Any, sb: ServiceBusAdmin
) -> None:
    spec = SubscriptionSpec("all")
    provision(sb, "sba-giveup", spec)
    settings = settings_for(sb, "sba-giveup")
    breaches = [make_breach(n) for n in range(500, 503)]
    impatient = ServiceBusAlertPublisher(
        settings,
        backoff=Backoff(initial_s=0.1, max_s=0.1, max_retries=1, jitter_fraction=0.2),
        attempt_timeout_s=2.0,
    )
    async with impatient as topic_publisher:
        await topic_publisher.publish(breaches[:1])
        amqp_broker.server_busy(30.0)
        amqp_broker.drop_connections()
        with pytest.raises(AlertBusError, match="gave up after 2 attempts") as raised:
            await topic_publisher.publish(breaches)
        assert raised.value.retryable
        amqp_broker.clear_faults()
        # What the processor does next: the same call again.
        await topic_publisher.publish(breaches)
    assert sb.servicebus_sent("sba-giveup") == (3, 1)
    assert sb.servicebus_counts("sba-giveup/Subscriptions/all")["active"] == 3


async def read_what_the_broker_sent(topic_publisher: ServiceBusAlertPublisher) -> None:
    """What the SDK's keep-alive task does every 30 s on an idle sender: read the frames the
    broker sent meanwhile, here until the sender's link has taken in the broker's detach."""
    handler: Any = topic_publisher._sender._handler  # type: ignore[union-attr]
    deadline = time.monotonic() + WAIT_S
    while handler._link._error is None:
        assert time.monotonic() < deadline, "the broker's detach never arrived"
        await handler._connection.listen(wait=0.1)


async def test_a_publisher_opened_while_busy_publishes_once_the_spell_is_over(
    amqp_broker: Any, sb: ServiceBusAdmin
) -> None:
    """The busy broker echoes the sender's attach, then detaches it with server-busy; the SDK
    opens on the echo. Once its keep-alive reads the detach, the link holds that error, and the
    SDK raises it on every send without reconnecting (server-busy does not close the handler):
    the processor's publishes failed with "Service Bus is busy" for minutes after the spell."""
    spec = SubscriptionSpec("all")
    provision(sb, "sba-busy-open", spec)
    settings = settings_for(sb, "sba-busy-open")
    quick = Backoff(initial_s=0.1, max_s=0.2, max_retries=3, jitter_fraction=0.2)
    refused_before = amqp_broker.fault_count("server_busy_attach")
    amqp_broker.server_busy(60.0, mode="reject")
    async with ServiceBusAlertPublisher(settings, backoff=quick) as topic_publisher:
        assert amqp_broker.fault_count("server_busy_attach") > refused_before
        amqp_broker.clear_faults()
        await read_what_the_broker_sent(topic_publisher)
        rejected_before = amqp_broker.fault_count("server_busy_transfer")
        await topic_publisher.publish([make_breach(600)])
        assert amqp_broker.fault_count("server_busy_transfer") == rejected_before
    assert sb.servicebus_sent("sba-busy-open") == (1, 0)


async def test_partitions_publishing_at_once_each_get_through_once(sb: ServiceBusAdmin) -> None:
    """One publisher serves every partition of a processor, whose batches publish at the same
    time; the SDK's sender is not coroutine-safe (its README), and sends sharing it lost
    deliveries: attempts timed out and were sent again."""
    spec = SubscriptionSpec("all")
    provision(sb, "sba-together", spec)
    partitions, batches, per_batch = 8, 6, 3
    patient = Backoff(initial_s=0.1, max_s=0.2, max_retries=0)

    async def partition(topic_publisher: ServiceBusAlertPublisher, p: int) -> None:
        for b in range(batches):
            first = 700 + (p * batches + b) * per_batch
            await topic_publisher.publish([make_breach(first + n) for n in range(per_batch)])

    shared = ServiceBusAlertPublisher(
        settings_for(sb, "sba-together"), backoff=patient, attempt_timeout_s=2.0
    )
    async with shared as topic_publisher, asyncio.TaskGroup() as group:
        for p in range(partitions):
            group.create_task(partition(topic_publisher, p))
    assert sb.servicebus_sent("sba-together") == (partitions * batches * per_batch, 0)
