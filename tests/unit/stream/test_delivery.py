"""How every source retries its handler (stream.delivery): failures again, until the partition
closes or the source stops; a partition lost to another processor gives its batch up at once."""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.repeated import RepeatedFailure
from common.retry import Backoff
from store.exceptions import StoreUnavailable
from stream import delivery
from stream.delivery import deliver
from stream.exceptions import PartitionLost
from tests.unit.flaky import Flaky


async def run(handler: Flaky) -> bool:
    return await deliver(
        handler, partition_id="3", first_sequence=40, closing=lambda: False, stop=asyncio.Event()
    )


async def test_a_failing_batch_is_attempted_again_until_it_succeeds() -> None:
    handler = Flaky(RuntimeError("store down"), ValueError("a bug"))
    assert await run(handler) is True
    assert handler.calls == 3


async def test_a_batch_of_a_partition_lost_to_another_processor_is_given_up_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stream.delivery")
    handler = Flaky(PartitionLost("partition 3 is owned by another processor now"))
    assert await run(handler) is False
    assert handler.calls == 1
    (record,) = [r for r in caplog.records if r.name == "stream.delivery"]
    assert record.getMessage() == ("batch abandoned: partition 3 is owned by another processor now")
    assert record.levelno == logging.WARNING and record.exc_info is None
    assert not [r for r in caplog.records if r.name == "common.retry"]


async def test_a_lasting_failure_is_said_once_without_traceback_and_its_end_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk: one line as it starts, not a traceback at each retry; one as it ends."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(delivery, "HANDLER_BACKOFF", Backoff(initial_s=0.001, max_s=0.001))
    full = StoreUnavailable("write telemetry: SQLite: database or disk is full", retryable=True)
    handler = Flaky(*[full] * 5)
    failures = RepeatedFailure("batches", logging.getLogger("stream.delivery"))
    delivered = await deliver(
        handler,
        partition_id="3",
        first_sequence=40,
        closing=lambda: False,
        stop=asyncio.Event(),
        failures=failures,
    )
    assert delivered is True and handler.calls == 6
    assert [(r.levelno, r.getMessage(), r.exc_info) for r in caplog.records] == [
        (
            logging.ERROR,
            "batches failing: write telemetry: SQLite: database or disk is full (partition 3);"
            " retrying until they succeed (next in 0.0 s), nothing is lost",
            None,
        ),
        (logging.WARNING, "batches succeed again, after 5 failures over 0 s", None),
    ]
