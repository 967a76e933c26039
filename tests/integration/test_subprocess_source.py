"""SubprocessSource with a real source in a real child process: the embedded log's source.

The Event Hubs source runs this way by default; the end-to-end Azure test covers that pairing.
Here the port's promises are checked one by one across the process boundary: order, retry in
place, checkpoints written by the child, closes, a killed child, a killed parent.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream.config import ProcessorSettings
from stream.exceptions import SourceError
from stream.ports import CloseReason, PartitionContext, ReceivedEvent
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_consumer import eventhubs_source
from stream.sources.local_log import LocalLog, LocalLogSource
from stream.sources.subprocess_source import SubprocessSource

pytestmark = pytest.mark.integration

PARTITIONS = 4
GROUP = "$Default"


def append(log_path: Path, count: int, start: int = 0) -> dict[int, list[int]]:
    """Append ``count`` small bodies over 16 keys; the sequences each partition received."""
    log = LocalLog(log_path, PARTITIONS)
    try:
        items = [(f"app-{i % 16}", b'{"n": %d}' % i) for i in range(start, start + count)]
        positions = log.append(items)
    finally:
        log.close()
    appended: dict[int, list[int]] = {}
    for partition, sequence in positions:
        appended.setdefault(partition, []).append(sequence)
    assert len(appended) == PARTITIONS, "every partition should get events"
    return appended


def checkpoints(log_path: Path) -> dict[int, int]:
    log = LocalLog(log_path, PARTITIONS)
    try:
        return {p: log.checkpoint(GROUP, p) for p in range(PARTITIONS)}
    finally:
        log.close()


def local_source(log_path: Path, batch_size: int = 50) -> SubprocessSource:
    return SubprocessSource(
        functools.partial(LocalLogSource, log_path, PARTITIONS, GROUP, batch_size, 0.02, 86_400)
    )


class Recorder:
    """A handler that records what it is given and checkpoints after every batch."""

    def __init__(self, fail_first_attempt_of: set[tuple[str, int]] | None = None) -> None:
        self.fail = set(fail_first_attempt_of or ())
        self.events: list[str] = []
        self.attempts: list[tuple[str, int]] = []
        self.processed: dict[str, list[int]] = {}
        self.initialized: list[str] = []
        self.closed: list[tuple[str, CloseReason]] = []

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        self.events.append(f"init {context.partition_id}")
        self.initialized.append(context.partition_id)

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        first = (context.partition_id, events[0].sequence)
        self.attempts.append(first)
        if first in self.fail:
            self.fail.discard(first)
            raise RuntimeError(f"injected failure at {first}")
        assert all(event.partition == context.partition_id for event in events)
        self.processed.setdefault(context.partition_id, []).extend(e.sequence for e in events)
        self.events.append(f"batch {context.partition_id}")
        await context.checkpoint(events[-1])

    async def on_idle(self, context: PartitionContext) -> None:
        self.events.append(f"idle {context.partition_id}")

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        self.events.append(f"close {context.partition_id}")
        self.closed.append((context.partition_id, reason))

    def of(self, partition: str) -> list[str]:
        """What happened to ``partition``, in order: init, batch, idle, close."""
        return [e.split()[0] for e in self.events if e.split()[1] == partition]

    def count(self) -> int:
        return sum(len(sequences) for sequences in self.processed.values())


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)
    assert condition(), what


async def run_until(
    source: SubprocessSource, recorder: Recorder, condition: Callable[[], bool]
) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(source.run(recorder, stop))
    try:
        await wait_for(lambda: condition() or running.done(), "the condition")
        assert not running.done(), running.exception()
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await running


def expected_sequences(appended: dict[int, list[int]]) -> dict[str, list[int]]:
    return {str(partition): sequences for partition, sequences in appended.items()}


async def test_batches_arrive_in_order_and_the_child_writes_the_checkpoints(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "log.db"
    appended = append(log_path, 2_000)
    recorder = Recorder()
    source = local_source(log_path)

    await run_until(source, recorder, lambda: recorder.count() >= 2_000)

    assert recorder.processed == expected_sequences(appended)
    assert checkpoints(log_path) == {p: seqs[-1] for p, seqs in appended.items()}
    assert sorted(recorder.closed) == [(str(p), CloseReason.SHUTDOWN) for p in range(PARTITIONS)]
    for partition in map(str, range(PARTITIONS)):
        # Initialised before its first batch, closed after its last.
        mine = recorder.of(partition)
        assert mine[0] == "init" and mine[-1] == "close"
    assert source.restarts == 0 and source.child_pid is None


async def test_the_childs_idle_turns_reach_the_handler_after_the_batches_before_them(
    tmp_path: Path,
) -> None:
    # The handler checkpoints the end of a burst at an idle turn (Pipeline.on_idle): one that
    # came before the burst's last batch was handled would checkpoint short of it.
    log_path = tmp_path / "log.db"
    appended = append(log_path, 1_000)
    recorder = Recorder()

    def idle_after_every_batch() -> bool:
        return recorder.count() >= 1_000 and all(
            recorder.of(str(p))[-1:] == ["idle"] for p in range(PARTITIONS)
        )

    await run_until(local_source(log_path), recorder, idle_after_every_batch)

    assert recorder.processed == expected_sequences(appended)
    for partition in map(str, range(PARTITIONS)):
        mine = recorder.of(partition)
        assert "idle" in mine[mine.index("batch") :], mine


async def test_a_failed_batch_is_delivered_again_before_any_later_one(tmp_path: Path) -> None:
    log_path = tmp_path / "log.db"
    appended = append(log_path, 600)
    victim = ("0", appended[0][50])  # the first sequence of partition 0's second batch
    recorder = Recorder(fail_first_attempt_of={victim})

    await run_until(local_source(log_path), recorder, lambda: recorder.count() >= 600)

    assert recorder.processed == expected_sequences(appended)
    attempts = [first for first in recorder.attempts if first[0] == "0"]
    index = attempts.index(victim)
    assert attempts[index + 1] == victim  # retried in place, nothing in between
    assert attempts.count(victim) == 2


async def test_a_killed_child_closes_its_partitions_as_lost_and_a_new_one_resumes(
    tmp_path: Path,
) -> None:
    log_path = tmp_path / "log.db"
    appended = append(log_path, 1_000)
    recorder = Recorder()
    source = local_source(log_path, batch_size=20)
    stop = asyncio.Event()
    running = asyncio.create_task(source.run(recorder, stop))
    try:
        await wait_for(lambda: recorder.count() >= 300, "the first events")
        pid = source.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: len(recorder.closed) == PARTITIONS, "the lost partitions")
        assert all(reason is CloseReason.OWNERSHIP_LOST for _, reason in recorder.closed)
        more = append(log_path, 400, start=1_000)
        everything = {str(p): set(appended[p] + more.get(p, [])) for p in range(PARTITIONS)}
        await wait_for(
            lambda: all(everything[p] <= set(recorder.processed.get(p, ())) for p in everything),
            "every event after the restart",
        )
        assert source.restarts == 1 and source.child_pid not in (None, pid)
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await running

    # Each partition was initialised again after the restart and resumed from its checkpoint:
    # every event at least once and in order. Repeats are the batches whose checkpoint the
    # kill cut off (a few batches of 20 at most, each attempt recorded).
    assert sorted(recorder.initialized) == sorted([str(p) for p in range(PARTITIONS)] * 2)
    for partition in range(PARTITIONS):
        sequences = appended[partition] + more.get(partition, [])
        processed = recorder.processed[str(partition)]
        assert list(dict.fromkeys(processed)) == sequences
        assert len(processed) - len(sequences) <= 3 * 20
    assert checkpoints(log_path) == {
        p: (appended[p] + more.get(p, []))[-1] for p in range(PARTITIONS)
    }


async def test_a_sigterm_to_the_child_leaves_stopping_to_the_parent(tmp_path: Path) -> None:
    """SIGTERM sent to the whole process group (kill -TERM -PGID, systemd) reaches the child
    too. It killed it (exit -15): the parent started another one ("retry 1 of ∞") while
    stopping, and the partitions closed as lost, without their final checkpoints."""
    log_path = tmp_path / "log.db"
    appended = append(log_path, 400)
    recorder = Recorder()
    source = local_source(log_path)
    stop = asyncio.Event()
    running = asyncio.create_task(source.run(recorder, stop))
    try:
        await wait_for(lambda: recorder.count() >= 400, "the first events")
        pid = source.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGTERM)
        # Still the same child, still receiving.
        more = append(log_path, 400, start=400)
        await wait_for(lambda: recorder.count() >= 800, "the events after the SIGTERM")
        assert source.child_pid == pid and source.restarts == 0
    finally:
        stop.set()  # what the parent's own SIGTERM handler does
        async with asyncio.timeout(60):
            await running
    assert source.restarts == 0
    assert sorted(recorder.closed) == [(str(p), CloseReason.SHUTDOWN) for p in range(PARTITIONS)]
    assert checkpoints(log_path) == {p: (appended[p] + more[p])[-1] for p in range(PARTITIONS)}


async def test_a_configuration_error_in_the_child_ends_the_run_with_its_message() -> None:
    # No connection string and no namespace: EventHubsSource refuses in the child.
    source = SubprocessSource(
        functools.partial(eventhubs_source, EventHubsSettings(), ProcessorSettings())
    )
    started = time.monotonic()
    with pytest.raises(SourceError, match="needs connection_string or fully_qualified_namespace"):
        async with asyncio.timeout(60):
            await source.run(Recorder(), asyncio.Event())
    assert source.restarts == 0
    assert time.monotonic() - started < 30


PARENT = """
import asyncio, functools, sys
from pathlib import Path
from stream.sources.local_log import LocalLogSource
from stream.sources.subprocess_source import SubprocessSource

class Stuck:
    async def on_partition_initialize(self, context):
        pass
    async def on_batch(self, context, events):
        print("child", source.child_pid, flush=True)
        await asyncio.Event().wait()
    async def on_partition_close(self, context, reason):
        pass

source = SubprocessSource(
    functools.partial(LocalLogSource, Path(sys.argv[1]), 4, "$Default", 50, 0.02, 86400)
)
asyncio.run(source.run(Stuck(), asyncio.Event()))
"""


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has exited; only its reaping is left


async def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    log_path = tmp_path / "log.db"
    append(log_path, 100)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(log_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(parent.stdout.readline), 60)
        child = int(line.split()[1])
        assert not gone(child)
    finally:
        parent.kill()
        parent.wait(timeout=30)
    await wait_for(lambda: gone(child), "the orphaned child to exit", timeout=30)
