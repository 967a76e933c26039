"""The embedded topic: fan-out, duplicates, peek-lock, settlement and dead-lettering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alerts import (
    INVALID_BODY,
    MAX_DELIVERY_COUNT_EXCEEDED,
    AlertBusBusyError,
    AlertClientClosedError,
    LockLostError,
    SubscriptionSpec,
    UnknownSubscriptionError,
)
from alerts.config import AlertSettings
from alerts.ports import PublishedPosition
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common.sqlite import sqlite3
from schemas import BreachKind, BreachState, Severity
from tests.unit.alerts.factories import FakeClock, make_breach

ALL = SubscriptionSpec("all", max_delivery_count=3, lock_duration_s=30.0)
CRITICAL = SubscriptionSpec("critical", {"severity": "critical"})
BOT_DRIFT = SubscriptionSpec("bot-drift", {"app_id": "chat-bot", "kind": "drift"})


def publisher(path: Path, clock: FakeClock, *specs: SubscriptionSpec, **kw) -> SqliteAlertPublisher:
    return SqliteAlertPublisher(path, specs or (ALL,), clock=clock, **kw)


def receiver(
    path: Path, clock: FakeClock, sub: SubscriptionSpec | str = ALL
) -> SqliteAlertReceiver:
    return SqliteAlertReceiver(path, sub, clock=clock, poll_interval_s=0.005)


async def drain(rx: SqliteAlertReceiver) -> list[str]:
    """Receive and complete everything visible now; return the message ids in order."""
    ids: list[str] = []
    while alerts := await rx.receive(100, 0):
        for alert in alerts:
            await rx.complete(alert)
            ids.append(alert.message_id)
    return ids


async def test_publish_fans_out_by_filter(bus_path: Path, clock: FakeClock) -> None:
    breaches = [
        make_breach(1),
        make_breach(2, severity=Severity.CRITICAL),
        make_breach(3, kind=BreachKind.DRIFT),
        make_breach(4, app_id="search", kind=BreachKind.DRIFT, severity=Severity.CRITICAL),
    ]
    async with publisher(bus_path, clock, ALL, CRITICAL, BOT_DRIFT) as pub:
        await pub.publish(breaches)
    async with (
        receiver(bus_path, clock, "all") as all_rx,
        receiver(bus_path, clock, "critical") as crit_rx,
        receiver(bus_path, clock, "bot-drift") as drift_rx,
    ):
        assert await drain(all_rx) == [b.message_id for b in breaches]
        assert await drain(crit_rx) == [breaches[1].message_id, breaches[3].message_id]
        assert await drain(drift_rx) == [breaches[2].message_id]


async def test_received_alert_carries_the_breach(bus_path: Path, clock: FakeClock) -> None:
    breach = make_breach(7, severity=Severity.CRITICAL)
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([breach])
        [alert] = await rx.receive(10, 0)
    assert alert.breach == breach
    assert alert.message_id == f"{breach.breach_id}:opened"
    assert alert.delivery_count == 1
    assert alert.enqueued_time.timestamp() == pytest.approx(clock.now)
    assert alert.locked_until.timestamp() == pytest.approx(clock.now + ALL.lock_duration_s)


async def test_duplicate_message_ids_are_delivered_once(bus_path: Path, clock: FakeClock) -> None:
    opened = make_breach(1)
    resolved = make_breach(1, state=BreachState.RESOLVED)
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([opened, opened])  # duplicate inside one call
        await pub.publish([opened, resolved])  # and across calls; resolved is a new message id
        assert await drain(rx) == [opened.message_id, resolved.message_id]
        await pub.publish([opened])  # still a duplicate after it was completed
        assert await drain(rx) == []


async def test_duplicate_window_expires(bus_path: Path, clock: FakeClock) -> None:
    breach = make_breach(1)
    async with (
        publisher(bus_path, clock, duplicate_window_s=60.0) as pub,
        receiver(bus_path, clock) as rx,
    ):
        await pub.publish([breach])
        clock.advance(59)
        await pub.publish([breach])
        assert await drain(rx) == [breach.message_id]
        clock.advance(2)  # 61 s after the first publish: outside the window
        await pub.publish([breach])
        assert await drain(rx) == [breach.message_id]


async def test_duplicate_detection_survives_reopening(bus_path: Path, clock: FakeClock) -> None:
    breach = make_breach(1)
    async with publisher(bus_path, clock) as pub:
        await pub.publish([breach])
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([breach])
        assert await drain(rx) == [breach.message_id]


async def test_a_locked_alert_is_invisible_until_its_lock_expires(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        [first] = await rx.receive(10, 0)
        clock.advance(ALL.lock_duration_s - 0.1)
        assert await rx.receive(10, 0) == []
        clock.advance(0.2)
        [second] = await rx.receive(10, 0)
        assert second.message_id == first.message_id
        assert second.delivery_count == 2
        assert second.lock_token != first.lock_token
        with pytest.raises(LockLostError):
            await rx.complete(first)  # the old lock is gone, whoever holds the new one
        await rx.complete(second)
        assert await rx.receive(10, 0) == []


async def test_complete_after_lock_expiry_raises_lock_lost(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        [alert] = await rx.receive(10, 0)
        clock.advance(ALL.lock_duration_s + 1)
        with pytest.raises(LockLostError) as caught:
            await rx.complete(alert)
        assert caught.value.retryable is False
        # Not lost: it comes back.
        [again] = await rx.receive(10, 0)
        assert again.message_id == alert.message_id


async def test_settling_twice_raises_lock_lost(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        [alert] = await rx.receive(10, 0)
        await rx.complete(alert)
        with pytest.raises(LockLostError):
            await rx.complete(alert)
        with pytest.raises(LockLostError):
            await rx.abandon(alert)


async def test_abandon_makes_the_alert_visible_again_at_once(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1), make_breach(2)])
        first, second = await rx.receive(10, 0)
        await rx.abandon(first)
        [again] = await rx.receive(10, 0)
        assert (again.message_id, again.delivery_count) == (first.message_id, 2)
        await rx.complete(second)
        await rx.complete(again)
        assert await rx.receive(10, 0) == []


async def test_dead_letter_keeps_reason_and_description(bus_path: Path, clock: FakeClock) -> None:
    breach = make_breach(1)
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([breach, make_breach(2)])
        first, _ = await rx.receive(1, 0) + await rx.receive(1, 0)
        clock.advance(5)
        await rx.dead_letter(first, "WebhookRejectedError", "POST answered 404")
        [dead] = await rx.dead_letters()
        assert dead.breach == breach
        assert dead.message_id == breach.message_id
        assert (dead.reason, dead.description) == ("WebhookRejectedError", "POST answered 404")
        assert dead.delivery_count == 1
        assert dead.dead_lettered_at.timestamp() == pytest.approx(clock.now)
        assert dead.raw is None
        with pytest.raises(LockLostError):
            await rx.complete(first)


async def test_max_deliveries_by_abandon_dead_letters(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        counts = []
        for _ in range(ALL.max_delivery_count):
            [alert] = await rx.receive(10, 0)
            counts.append(alert.delivery_count)
            await rx.abandon(alert)
        assert counts == [1, 2, 3]
        assert await rx.receive(10, 0) == []
        [dead] = await rx.dead_letters()
        assert dead.reason == MAX_DELIVERY_COUNT_EXCEEDED
        assert dead.delivery_count == ALL.max_delivery_count


async def test_max_deliveries_by_lock_expiry_dead_letters(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        for expected_count in range(1, ALL.max_delivery_count + 1):
            [alert] = await rx.receive(10, 0)
            assert alert.delivery_count == expected_count
            clock.advance(ALL.lock_duration_s + 1)  # a receiver that died holding the lock
        assert await rx.receive(10, 0) == []
        [dead] = await rx.dead_letters()
        assert (dead.message_id, dead.reason) == (
            "breach-00001:opened",
            MAX_DELIVERY_COUNT_EXCEEDED,
        )
        assert "3 deliveries" in dead.description


async def test_renew_lock_extends_it(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        [alert] = await rx.receive(10, 0)
        clock.advance(20)
        until = await rx.renew_lock(alert)
        assert until.timestamp() == pytest.approx(clock.now + ALL.lock_duration_s)
        clock.advance(20)  # 40 s after receive: past the first lock, inside the renewed one
        assert await rx.receive(10, 0) == []
        await rx.complete(alert)
        clock.advance(ALL.lock_duration_s)
        with pytest.raises(LockLostError):
            await rx.renew_lock(alert)


async def test_receive_waits_for_a_message_published_meanwhile(bus_path: Path) -> None:
    async with (
        SqliteAlertPublisher(bus_path, [ALL]) as pub,
        SqliteAlertReceiver(bus_path, ALL, poll_interval_s=0.01) as rx,
    ):
        waiting = asyncio.create_task(rx.receive(10, 5.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await pub.publish([make_breach(1)])
        [alert] = await asyncio.wait_for(waiting, 2.0)
        assert alert.message_id == "breach-00001:opened"


async def test_receive_returns_empty_after_max_wait(bus_path: Path) -> None:
    async with SqliteAlertReceiver(bus_path, ALL, poll_interval_s=0.01) as rx:
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await rx.receive(10, 0.1) == []
        # Returns once the wait is over (the upper bound only says it does not hang: a loaded
        # machine may take a while to hand the empty answer back).
        assert 0.1 <= loop.time() - started < 5.0


async def test_receive_respects_max_count(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(n) for n in range(5)])
        assert len(await rx.receive(2, 0)) == 2
        assert len(await rx.receive(10, 0)) == 3


async def test_cancelled_receive_hands_claimed_alerts_back(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
        task = asyncio.create_task(rx.receive(10, 0))
        await asyncio.sleep(0)  # the claim has started in its worker thread
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Without waiting for the lock to expire, and not counted as a delivery.
        [alert] = await rx.receive(10, 0)
        assert alert.delivery_count == 1


async def test_subscription_created_after_publish_gets_only_later_alerts(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub:
        await pub.publish([make_breach(1)])
        async with receiver(bus_path, clock, CRITICAL) as rx:
            await pub.publish([make_breach(2, severity=Severity.CRITICAL)])
            assert await drain(rx) == ["breach-00002:opened"]


async def test_changed_filter_updates_the_subscription(bus_path: Path, clock: FakeClock) -> None:
    async with publisher(bus_path, clock, SubscriptionSpec("ops", {"app_id": "chat-bot"})):
        pass
    async with (
        publisher(bus_path, clock, SubscriptionSpec("ops", {"app_id": "search"})) as pub,
        receiver(bus_path, clock, "ops") as rx,
    ):
        await pub.publish([make_breach(1), make_breach(2, app_id="search")])
        assert await drain(rx) == ["breach-00002:opened"]
        assert rx.spec.filter == {"app_id": "search"}


async def test_unknown_subscription_name_lists_the_known_ones(bus_path: Path) -> None:
    async with SqliteAlertPublisher(bus_path, [ALL, CRITICAL]):
        pass
    with pytest.raises(UnknownSubscriptionError, match="known subscriptions: all, critical"):
        async with SqliteAlertReceiver(bus_path, "nope"):
            pass


async def test_unreadable_body_is_dead_lettered_not_delivered(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock) as pub, receiver(bus_path, clock) as rx:
        await pub.publish([make_breach(1)])
    with sqlite3.connect(bus_path) as connection:
        connection.execute(
            "INSERT INTO messages (subscription, message_id, body, enqueued_at, visible_at) "
            "VALUES ('all', 'garbage:1', x'7b6e6f', 0, 0)"
        )
    connection.close()
    async with receiver(bus_path, clock) as rx:
        assert await drain(rx) == ["breach-00001:opened"]
        [dead] = await rx.dead_letters()
        assert (dead.message_id, dead.reason, dead.breach, dead.raw) == (
            "garbage:1",
            INVALID_BODY,
            None,
            b"{no",
        )


async def test_reuse_after_close_raises(bus_path: Path, clock: FakeClock) -> None:
    pub = publisher(bus_path, clock)
    rx = receiver(bus_path, clock)
    async with pub, rx:
        pass
    with pytest.raises(AlertClientClosedError):
        await pub.publish([make_breach(1)])
    with pytest.raises(AlertClientClosedError):
        await rx.receive(1, 0)
    with pytest.raises(AlertClientClosedError):
        async with pub:
            pass


def test_subscription_spec_rejects_unknown_filter_keys() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        SubscriptionSpec("x", {"team": "a"})


@pytest.mark.parametrize(
    ("filter_", "said"),
    [
        # Values are matched exactly: "Critical" would never page anyone.
        ({"severity": "Critical"}, "severity 'Critical' is never a breach's"),
        ({"severity": "page"}, "one of: warning, critical"),
        ({"kind": "errors"}, "one of: drift, latency, error_rate, evaluation"),
        ({"state": "open"}, "one of: opened, escalated, resolved"),
        ({"app_id": "web app"}, "app_id 'web app' is not an app id"),
        ({"app_id": "web-app\n"}, "is not an app id"),
    ],
)
def test_a_filter_no_breach_can_match_is_refused(filter_: dict[str, str], said: str) -> None:
    with pytest.raises(ValueError, match=said):
        SubscriptionSpec("x", filter_)


def test_a_subscription_name_defined_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[2\]\.name: subscription 'pager' is defined twice"):
        AlertSettings(
            subscriptions=(
                SubscriptionSpec("pager", {"severity": "critical"}),
                SubscriptionSpec("all"),
                SubscriptionSpec("pager", {"severity": "warning"}),
            )
        )


def test_every_value_a_breach_routes_with_is_a_valid_filter() -> None:
    breach = make_breach(1)
    spec = SubscriptionSpec("x", breach.routing_properties)
    assert spec.matches(breach)


async def test_a_long_held_write_lock_raises_a_retryable_busy_error(
    bus_path: Path, clock: FakeClock
) -> None:
    async with publisher(bus_path, clock, busy_timeout_s=0.1) as pub:
        other = sqlite3.connect(bus_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
            with pytest.raises(AlertBusBusyError) as caught:
                await pub.publish([make_breach(1)])
            assert caught.value.retryable is True
            other.execute("ROLLBACK")
        finally:
            other.close()
        await pub.publish([make_breach(1)])  # the failed call is simply repeated
    async with receiver(bus_path, clock) as rx:
        assert await drain(rx) == ["breach-00001:opened"]


async def test_a_numbered_publish_records_the_partitions_last_breach_and_never_moves_back(
    bus_path: Path, clock: FakeClock
) -> None:
    def at(number: int, sequence: int) -> PublishedPosition:
        return PublishedPosition("$Default", "3", number, sequence)

    async with publisher(bus_path, clock) as pub:
        assert await pub.held_through("$Default", "3") is None
        await pub.publish_numbered([make_breach(1), make_breach(2)], at(1, 40))
        # A late batch of an owner that lost the partition: its breaches are taken (duplicate
        # detection decides), the record stays where it is.
        await pub.publish_numbered([make_breach(3)], at(0, 12))
        await pub.publish([make_breach(4)])  # not numbered (the cold path): no record
        assert await pub.held_through("$Default", "3") == at(1, 40)
        assert await pub.held_through("$Default", "4") is None
        assert await pub.held_through("replay", "3") is None
    async with receiver(bus_path, clock) as rx:
        assert len(await drain(rx)) == 4
