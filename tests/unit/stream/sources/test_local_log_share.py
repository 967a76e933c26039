"""Shares of the embedded log for worker processes: a partition is processed by one owner at a
time (its lock file says who), even when two are told to own it, and a moved partition resumes
from the checkpoint its previous owner wrote when letting go."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from evalstream.workers import shares
from stream.ports import CloseReason, PartitionContext, ReceivedEvent
from stream.sources.local_log import LocalLog, partition_for
from stream.sources.local_log_share import LocalLogShare

PARTITIONS = 2


class Recorder:
    """A BatchHandler that checkpoints when a partition closes, and checks that no partition is
    ever open in two handlers at once."""

    def __init__(self, name: str, open_now: Counter[str], seen: list[tuple[str, int]]) -> None:
        self.name = name
        self.open_now = open_now
        self.seen = seen
        self.overlaps = 0
        self.last: dict[str, ReceivedEvent] = {}

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        self.open_now[context.partition_id] += 1
        if self.open_now[context.partition_id] > 1:
            self.overlaps += 1

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        self.seen.extend((self.name, event.sequence) for event in events)
        self.last[context.partition_id] = events[-1]

    async def on_idle(self, context: PartitionContext) -> None:
        pass

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        assert reason is CloseReason.SHUTDOWN
        last = self.last.pop(context.partition_id, None)
        if last is not None:
            await context.checkpoint(last)
        self.open_now[context.partition_id] -= 1


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def share(tmp_path: Path) -> LocalLogShare:
    return LocalLogShare(tmp_path / "log.db", PARTITIONS, "g", 50, 0.01, tmp_path / "locks")


async def test_one_owner_at_a_time_and_a_moved_partition_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    log = LocalLog(tmp_path / "log.db", PARTITIONS)
    key = next(f"app-{i}" for i in range(100) if partition_for(f"app-{i}", PARTITIONS) == 0)
    log.append([(key, b"x")] * 300)
    open_now: Counter[str] = Counter()
    seen: list[tuple[str, int]] = []
    first, second = share(tmp_path), share(tmp_path)
    a, b = Recorder("a", open_now, seen), Recorder("b", open_now, seen)
    stop = asyncio.Event()
    first.assign([0])
    running = [asyncio.create_task(first.run(a, stop))]
    try:
        await wait_for(lambda: len(seen) == 300, "the first owner's batches")
        # A confused supervisor gives the partition to a second owner as well: it waits.
        second.assign([0, 1])
        running.append(asyncio.create_task(second.run(b, stop)))
        await wait_for(lambda: second.held == {1}, "the second owner's free partition")
        await asyncio.sleep(0.3)  # ample time for a wrong second owner to start reading
        assert second.held == {1} and first.held == {0}
        # The first lets go: the second takes over after the checkpoint written at close.
        first.assign([])
        await wait_for(lambda: second.held == {0, 1}, "the partition to move")
        assert first.held == set()
        log.append([(key, b"y")] * 20)
        await wait_for(lambda: len(seen) == 320, "the new owner's batches")
    finally:
        stop.set()
        await asyncio.gather(*running)
        log.close()
    assert a.overlaps == b.overlaps == 0
    assert [sequence for _, sequence in seen] == list(range(320))
    assert {owner for owner, sequence in seen if sequence < 300} == {"a"}
    assert {owner for owner, sequence in seen if sequence >= 300} == {"b"}
    assert sum(open_now.values()) == 0


def test_shares_balance_partitions_over_live_workers_and_move_with_them() -> None:
    # A new log: round-robin.
    assert shares([0, 1], [0, 0, 0, 0]) == {0: [0, 2], 1: [1, 3]}
    # One busy partition gets a worker to itself rather than a busy neighbour.
    assert shares([0, 1], [1540, 2537, 9462, 6461]) == {0: [2], 1: [0, 1, 3]}
    # Worker 1 died: its partitions go to the others; restarted, they come back.
    assert shares([0, 2], [5, 5, 5, 5, 5]) == {0: [0, 2, 4], 2: [1, 3]}
    assert shares([2, 0, 1], [1, 1, 1]) == {0: [0], 1: [1], 2: [2]}
    assert shares([], [3, 3]) == {}
