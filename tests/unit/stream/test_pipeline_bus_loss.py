"""An embedded alert bus that lost published breaches (an older copy of its file put back, its
WAL cut) is found at start: the breaches are published again from the store's journal with their
ids, and what the journal lacks is said with its numbers, in the log and the status line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from alerts.config import SubscriptionSpec
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common.sqlite import sqlite3
from store.sqlite import SqliteStore
from stream.pipeline import Pipeline
from stream.ports import CloseReason
from tests.unit.stream.test_pipeline import Context, make_pipeline, received

ALL = SubscriptionSpec("all")


async def run(data: Path, first: int, count: int) -> tuple[Pipeline, Context]:
    """A processor's run over events ``first``..``first + count - 1`` of partition 0 (a breach
    every tenth event), stopped as on shutdown; the next run resumes from its snapshot."""
    async with (
        SqliteStore(data / "store.db") as store,
        SqliteAlertPublisher(data / "alerts.db", [ALL]) as bus,
    ):
        pipeline = make_pipeline(store, bus)  # type: ignore[arg-type]
        context = Context()
        await pipeline.on_partition_initialize(context)
        if count:
            await pipeline.on_batch(context, [received(i) for i in range(first, first + count)])
        await pipeline.on_partition_close(context, CloseReason.SHUTDOWN)
    return pipeline, context


async def delivered(data: Path) -> list[str]:
    ids: list[str] = []
    async with SqliteAlertReceiver(data / "alerts.db", ALL, poll_interval_s=0.005) as receiver:
        while alerts := await receiver.receive(100, 0):
            for alert in alerts:
                await receiver.complete(alert)
                ids.append(alert.message_id)
    return ids


def an_older_bus_put_back(data: Path, kept: Path) -> None:
    for path in data.glob("alerts.db*"):
        path.unlink()
    shutil.copy2(kept, data / "alerts.db")


LOST = "the alert bus lost"


async def test_breaches_an_older_bus_file_lacks_are_published_again_with_their_ids(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await run(tmp_path, 0, 10)  # breach b10 (number 0)
    shutil.copy2(tmp_path / "alerts.db", tmp_path / "alerts-then.db")  # closed: no WAL
    await run(tmp_path, 10, 30)  # b20, b30, b40 (numbers 1..3)
    an_older_bus_put_back(tmp_path, tmp_path / "alerts-then.db")

    with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
        pipeline, _ = await run(tmp_path, 40, 0)

    assert await delivered(tmp_path) == [f"b{n}:opened" for n in (10, 20, 30, 40)]
    [line] = [r.getMessage() for r in caplog.records if LOST in r.getMessage()]
    assert line == (
        "the alert bus lost 3 published breaches of partition 0 (numbers 1..3, raised by "
        "events after sequence 9 up to sequence 39): the bus file lost its last commits; "
        "published them again from the store's journal, with their ids"
    )
    assert pipeline.stats.lost_alerts == {}
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
        await run(tmp_path, 40, 10)  # found once, given again: the next start is quiet
    assert not [r for r in caplog.records if LOST in r.getMessage()]
    assert await delivered(tmp_path) == ["b50:opened"]


async def test_a_bus_file_deleted_gets_every_published_breach_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await run(tmp_path, 0, 25)
    await delivered(tmp_path)  # b10 and b20 handled by their subscriber
    for path in tmp_path.glob("alerts.db*"):
        path.unlink()

    with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
        await run(tmp_path, 25, 0)

    # Subscribers see them again under the same message ids, which they deduplicate.
    assert await delivered(tmp_path) == ["b10:opened", "b20:opened"]
    said = [r.getMessage() for r in caplog.records]
    assert any(
        "lost 2 published breaches of partition 0 (numbers 0..1, raised by events "
        "up to sequence 24)" in line
        for line in said
    )


async def test_breaches_the_journal_lacks_too_are_said_lost_with_their_numbers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await run(tmp_path, 0, 10)
    shutil.copy2(tmp_path / "alerts.db", tmp_path / "alerts-then.db")
    await run(tmp_path, 10, 40)  # numbers 1..4
    an_older_bus_put_back(tmp_path, tmp_path / "alerts-then.db")
    connection = sqlite3.connect(tmp_path / "store.db")
    with connection:
        connection.execute("DELETE FROM breaches WHERE number IN (1, 2, 4)")
    connection.close()

    with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
        pipeline, _ = await run(tmp_path, 50, 0)

    assert await delivered(tmp_path) == ["b10:opened", "b40:opened"]
    [line] = [r.getMessage() for r in caplog.records if LOST in r.getMessage()]
    assert line.endswith(
        "; 1 published again from the store's journal, 3 breaches of partition 0 "
        "(numbers 1..2, 4) are not in it and are lost"
    )
    assert pipeline.stats.lost_alerts == {"0": "3 breaches of partition 0 (numbers 1..2, 4)"}
    assert (await pipeline.stats.status_line()).endswith(
        "| alert bus lost 3 breaches of partition 0 (numbers 1..2, 4)"
    )


async def test_a_bus_that_holds_everything_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await run(tmp_path, 0, 30)
    async with SqliteAlertPublisher(tmp_path / "alerts.db", [ALL]) as bus:
        held = await bus.held_through("$Default", "0")
    assert held is not None and (held.number, held.sequence) == (2, 29)

    with caplog.at_level(logging.ERROR, logger="stream.pipeline"):
        await run(tmp_path, 30, 0)
    assert not [r for r in caplog.records if LOST in r.getMessage()]
    assert await delivered(tmp_path) == ["b10:opened", "b20:opened", "b30:opened"]
