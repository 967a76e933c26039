"""The breach log reads the embedded topic's file as the bus left it, without changing it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from alerts.config import SubscriptionSpec
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common.sqlite import sqlite3
from report.exceptions import ReportError
from report.sqlite_breaches import SqliteBreachLog
from tests.unit.report.docs import T0, breach


async def test_a_missing_file_is_an_empty_log_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "alerts.db"
    async with SqliteBreachLog(path) as log:
        assert await log.breaches([], T0) == []
    assert not path.exists()


async def test_every_held_message_once_whatever_the_subscriptions_did(tmp_path: Path) -> None:
    path = tmp_path / "alerts.db"
    specs = [SubscriptionSpec("all"), SubscriptionSpec("b-only", filter={"app_id": "b"})]
    opened = breach("a", T0, breach_id="x")
    resolved = breach("a", T0, T0 + timedelta(minutes=5), breach_id="x")
    other = breach("b", T0 + timedelta(minutes=1), breach_id="y")
    later = breach("a", T0 + timedelta(hours=2), breach_id="z")
    async with SqliteAlertPublisher(path, specs) as bus:
        await bus.publish([opened, resolved, other, later])
    # "b-only" dead-letters its copy of y, "all" completes its copy: y is still held once.
    async with SqliteAlertReceiver(path, specs[1]) as receiver:
        [alert] = await receiver.receive(10, 1.0)
        await receiver.dead_letter(alert, "test", "kept for the report")
    async with SqliteAlertReceiver(path, specs[0]) as receiver:
        received = await receiver.receive(10, 1.0)
        for alert in received:
            if alert.breach.breach_id == "y":
                await receiver.complete(alert)
            else:
                await receiver.abandon(alert)
    before = path.read_bytes()

    async with SqliteBreachLog(path) as log:
        everything = await log.breaches([], T0 + timedelta(hours=1))
        only_b = await log.breaches(["b"], T0 + timedelta(hours=3))
    assert sorted(b.message_id for b in everything) == sorted(
        m.message_id for m in (opened, resolved, other)
    )
    assert [b.breach_id for b in only_b] == ["y"]
    assert path.read_bytes() == before


async def test_an_unreadable_body_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "alerts.db"
    async with SqliteAlertPublisher(path, [SubscriptionSpec("all")]) as bus:
        await bus.publish([breach("a", T0)])
    with sqlite3.connect(path) as connection:
        connection.execute(
            "INSERT INTO dead_letters (subscription, message_id, body, enqueued_at, "
            "delivery_count, reason, description, dead_lettered_at) "
            "VALUES ('all', 'junk', x'7b7d', 0, 1, 'InvalidBody', '', 0)"
        )
    async with SqliteBreachLog(path) as log:
        assert [b.app_id for b in await log.breaches([], T0 + timedelta(1))] == ["a"]


async def test_a_closed_log_refuses_to_read(tmp_path: Path) -> None:
    log = SqliteBreachLog(tmp_path / "alerts.db")
    async with log:
        pass
    with pytest.raises(ReportError, match="closed"):
        await log.breaches([], T0)
