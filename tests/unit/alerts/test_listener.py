"""The subscriber loop over the embedded topic: poison alerts, retries, lock renewal, stopping."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from alerts import AlertBusBusyError, ReceivedAlert, SubscriptionSpec
from alerts.listener import DEFAULT_BACKOFF, AlertListener
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common.retry import Backoff
from tests.unit.alerts.factories import make_breach

SPEC = SubscriptionSpec("all", max_delivery_count=3, lock_duration_s=30.0)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


class RecordingHandler:
    """Records every call; fails for the apps in ``failing`` (a poison alert)."""

    def __init__(self, failing: frozenset[str] = frozenset(), delay_s: float = 0.0) -> None:
        self.failing = failing
        self.delay_s = delay_s
        self.calls: list[ReceivedAlert] = []
        self.handled: list[str] = []

    async def handle(self, alert: ReceivedAlert) -> None:
        self.calls.append(alert)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if alert.breach.app_id in self.failing:
            raise RuntimeError(f"cannot deliver {alert.breach.app_id}")
        self.handled.append(alert.message_id)


def fast(initial_s: float, max_s: float) -> Backoff:
    """The listener's schedule (up to 10% jitter), shortened for tests."""
    return dataclasses.replace(DEFAULT_BACKOFF, initial_s=initial_s, max_s=max_s)


def listener(rx: SqliteAlertReceiver, handler: RecordingHandler, **kw: object) -> AlertListener:
    options: dict[str, object] = {
        "max_delivery_count": rx.spec.max_delivery_count,
        "receive_wait_s": 0.05,
        "backoff": fast(0.01, 0.05),
    }
    options.update(kw)
    return AlertListener(rx, handler, **options)  # type: ignore[arg-type]


async def stop(task: asyncio.Task[None], loop_listener: AlertListener) -> None:
    loop_listener.stop()
    await asyncio.wait_for(task, 5.0)


async def test_poison_alert_is_dead_lettered_with_its_error_while_others_flow(
    bus_path: Path,
) -> None:
    handler = RecordingHandler(failing=frozenset({"poison"}))
    async with (
        SqliteAlertPublisher(bus_path, [SPEC]) as pub,
        SqliteAlertReceiver(bus_path, SPEC, poll_interval_s=0.01) as rx,
    ):
        # One handler at a time and a long backoff: the others can only get through if the
        # poison alert's backoff does not hold the listener.
        subscriber = listener(rx, handler, max_concurrency=1, backoff=fast(0.5, 2))
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(0, app_id="poison")])
        await until(lambda: len(handler.calls) == 1)
        await pub.publish([make_breach(n) for n in range(1, 21)])
        await until(lambda: subscriber.dead_lettered == 1)
        await stop(task, subscriber)
        dead_letters = await rx.dead_letters()
    assert Counter(handler.handled) == Counter(f"breach-{n:05d}:opened" for n in range(1, 21))
    poison_calls = [c for c in handler.calls if c.breach.app_id == "poison"]
    assert [c.delivery_count for c in poison_calls] == [1, 2, 3]
    # Every other alert went through while the poison alert waited out its first backoff.
    second_poison_call = handler.calls.index(poison_calls[1])
    assert all(c.breach.app_id == "poison" for c in handler.calls[second_poison_call:])
    [dead] = dead_letters
    assert dead.message_id == "breach-00000:opened"
    assert dead.reason == "RuntimeError"
    assert "cannot deliver poison" in dead.description
    assert dead.delivery_count == 3
    assert (subscriber.completed, subscriber.abandoned) == (20, 2)


async def test_a_failure_is_retried_after_backoff_and_then_completed(bus_path: Path) -> None:
    class FailsOnce(RecordingHandler):
        async def handle(self, alert: ReceivedAlert) -> None:
            self.calls.append(alert)
            if alert.delivery_count == 1:
                raise ConnectionError("webhook down")
            self.handled.append(alert.message_id)

    handler = FailsOnce()
    async with (
        SqliteAlertPublisher(bus_path, [SPEC]) as pub,
        SqliteAlertReceiver(bus_path, SPEC, poll_interval_s=0.01) as rx,
    ):
        subscriber = listener(rx, handler, backoff=fast(0.2, 1.0))
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        await until(lambda: subscriber.completed == 1)
        await stop(task, subscriber)
        assert await rx.dead_letters() == []
        assert await rx.receive(1, 0) == []
    assert [c.delivery_count for c in handler.calls] == [1, 2]
    # The second delivery came after the backoff, not at once.
    gap = handler.calls[1].locked_until - handler.calls[0].locked_until
    assert gap.total_seconds() >= 0.2 * 0.9


async def test_a_slow_handler_keeps_its_lock(bus_path: Path) -> None:
    # A lock short enough that only renewals keep it, long enough that a renewal a loaded
    # 2-core machine schedules late still comes in time.
    short_lock = SubscriptionSpec("all", max_delivery_count=3, lock_duration_s=1.0)
    handler = RecordingHandler(delay_s=2.5)  # two and a half lock durations
    async with (
        SqliteAlertPublisher(bus_path, [short_lock]) as pub,
        SqliteAlertReceiver(bus_path, short_lock, poll_interval_s=0.01) as rx,
        SqliteAlertReceiver(bus_path, short_lock, poll_interval_s=0.01) as competitor,
    ):
        subscriber = listener(rx, handler)
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        await until(lambda: len(handler.calls) == 1)
        # While the handler runs, the alert must never become visible to anyone else.
        assert await competitor.receive(1, 2.2) == []
        await until(lambda: subscriber.completed == 1)
        await stop(task, subscriber)
    assert len(handler.calls) == 1
    assert handler.handled == ["breach-00001:opened"]


async def test_stop_finishes_the_alert_in_flight(bus_path: Path) -> None:
    handler = RecordingHandler(delay_s=0.3)
    async with (
        SqliteAlertPublisher(bus_path, [SPEC]) as pub,
        SqliteAlertReceiver(bus_path, SPEC, poll_interval_s=0.01) as rx,
    ):
        subscriber = listener(rx, handler)
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        await until(lambda: len(handler.calls) == 1)
        subscriber.stop()
        await asyncio.wait_for(task, 5.0)
        assert subscriber.completed == 1
        assert await rx.receive(1, 0) == []


async def test_cancellation_hands_the_alert_back_at_once(bus_path: Path) -> None:
    blocked = asyncio.Event()

    class Blocks(RecordingHandler):
        async def handle(self, alert: ReceivedAlert) -> None:
            self.calls.append(alert)
            await blocked.wait()

    handler = Blocks()
    async with (
        SqliteAlertPublisher(bus_path, [SPEC]) as pub,
        SqliteAlertReceiver(bus_path, SPEC, poll_interval_s=0.01) as rx,
    ):
        subscriber = listener(rx, handler)
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        await until(lambda: len(handler.calls) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Visible again now, not after the 30 s lock.
        [again] = await rx.receive(1, 0)
    assert again.message_id == "breach-00001:opened"
    assert again.delivery_count == 2


async def test_a_busy_bus_pauses_the_listener_without_failing_it(bus_path: Path) -> None:
    class BusyOnce:
        def __init__(self, inner: SqliteAlertReceiver) -> None:
            self.inner = inner
            self.failures = 0

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        async def receive(self, max_count: int, max_wait_s: float) -> list[ReceivedAlert]:
            if self.failures == 0:
                self.failures += 1
                raise AlertBusBusyError("locked by another process", retry_after=0.01)
            return await self.inner.receive(max_count, max_wait_s)

    handler = RecordingHandler()
    async with (
        SqliteAlertPublisher(bus_path, [SPEC]) as pub,
        SqliteAlertReceiver(bus_path, SPEC, poll_interval_s=0.01) as rx,
    ):
        flaky = BusyOnce(rx)
        subscriber = listener(rx, handler)
        subscriber.receiver = flaky  # type: ignore[assignment]
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        await until(lambda: subscriber.completed == 1)
        await stop(task, subscriber)
    assert flaky.failures == 1
    assert handler.handled == ["breach-00001:opened"]


def test_backoff_grows_exponentially_and_is_capped() -> None:
    subscriber = AlertListener(
        object(),  # type: ignore[arg-type]
        RecordingHandler(),
        backoff=dataclasses.replace(DEFAULT_BACKOFF, max_s=10.0),
    )
    delays = [subscriber.backoff_s(n) for n in range(1, 7)]
    for delay, expected in zip(delays, [1, 2, 4, 8, 10, 10], strict=True):
        assert expected * 0.9 <= delay <= expected
