"""A replay job's partitions read by several worker processes (``replay --workers N``).

One process's event loop runs on one core and the pipeline is CPU-bound, as for ``process
--workers``. The job's unfinished partitions are shared out once, heaviest first to the least
loaded worker (``evalstream.workers.shares``), and each worker (``evalstream.replay_worker``)
runs the in-process reader (``stream.replay.flow.read``) over its share: the same pipeline,
the same per-partition checkpoints, snapshots and counts in the job's file. What comes after
reading (detection of several files, the report, ``--publish``) stays in the command.

The workers die with the command (a SIGKILLed replay leaves no reader behind to race its
``--resume``) and hold the job's lock with it. Ctrl-C and SIGTERM reach the command, which
asks every worker to finish its batches in flight and checkpoint. A worker that fails stops
the others the same way; the job then resumes from what every one of them checkpointed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from evalstream.settings import Settings
from evalstream.worker_pipe import start_worker
from evalstream.workers import shares
from stream.exceptions import ReplayError, StreamError
from stream.replay.flow import Reading
from stream.replay.ports import PartitionPlan
from stream.replay.spec import ReplaySpec
from stream.sources.subprocess_channel import Channel, decode_error, end_child

Share = list[tuple[PartitionPlan, int]]


def _left(plan: PartitionPlan, position: int) -> int:
    """What is left to read of ``plan`` from ``position``."""
    return max(0, plan.last - position)


def split(plans: Sequence[tuple[PartitionPlan, int]], workers: int) -> list[Share]:
    """``(plan, position)`` pairs shared out between at most ``workers`` processes, balanced
    by what is left to read of each."""
    owned = shares(range(workers), [_left(*pair) for pair in plans])
    return [[plans[index] for index in indices] for indices in owned.values() if indices]


def rates(groups: Sequence[Share], rate: float | None) -> list[float | None]:
    """``rate`` (events/s, None: unlimited) shared by what each share has left to read, so
    limited workers finish together: an equal split would leave the lighter one done early and
    the job below its limit for the rest."""
    if rate is None:
        return [None] * len(groups)
    left = [sum(_left(*pair) for pair in share) for share in groups]
    total = sum(left)
    if total == 0:
        return [rate / len(groups)] * len(groups)
    return [max(rate * part / total, 1.0) for part in left]


class ReplayWorkers:
    """``stream.replay.flow.Workers`` with worker processes: the job's file at ``job_path``,
    at most ``workers`` of them, ``rate`` (events/s, None: unlimited) shared (``rates``), and
    ``keep_fds`` (the job's lock) held open by every worker."""

    def __init__(
        self,
        settings: Settings,
        spec: ReplaySpec,
        job_path: Path,
        workers: int,
        rate: float | None,
        keep_fds: Sequence[int] = (),
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.job_path = job_path
        self.workers = workers
        self.rate = rate
        self.keep_fds = tuple(keep_fds)

    def processes(self, partitions: int) -> int:
        return min(self.workers, partitions)

    async def read(
        self,
        plans: Sequence[tuple[PartitionPlan, int]],
        reading: Reading,
        totals: Counter[str],
        on_events: Callable[[int, float], None],
        stop: asyncio.Event,
    ) -> bool:
        groups = split(plans, self.processes(len(plans)))
        # Set by the command's stop or by a worker's failure: every worker finishes and
        # checkpoints.
        halt = asyncio.Event()
        relay = asyncio.create_task(_relay(stop, halt))
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._worker(slot, share, reading, rate, totals, on_events, halt)
                    )
                    for slot, (share, rate) in enumerate(
                        zip(groups, rates(groups, self.rate), strict=True)
                    )
                ]
        finally:
            relay.cancel()
        outcomes = [task.result() for task in tasks]
        for outcome in outcomes:
            if isinstance(outcome, StreamError):
                raise outcome
        return all(outcome is True for outcome in outcomes)

    async def _worker(
        self,
        slot: int,
        share: Share,
        reading: Reading,
        rate: float | None,
        totals: Counter[str],
        on_events: Callable[[int, float], None],
        halt: asyncio.Event,
    ) -> bool | StreamError:
        """Run one worker over ``share``: True when it finished it, False when it stopped,
        the error that ended it."""
        process, channel = await start_worker(
            "evalstream.replay_worker",
            os.getpid(),
            self.settings,
            self.spec.model_dump_json(),
            str(self.job_path),
            share,
            reading,
            rate,
            pass_fds=self.keep_fds,
        )
        stopper = asyncio.create_task(_forward_stop(channel, halt))
        seen: Counter[str] = Counter()
        outcome: bool | StreamError | None = None
        try:
            while (message := await channel.receive()) is not None:
                kind = message[0]
                if kind == "events":
                    _, count, advanced, now = message
                    _add(totals, seen, now)
                    on_events(count, advanced)
                elif kind == "finished":
                    _, error, done, now = message
                    _add(totals, seen, now)
                    outcome = done if error is None else decode_error(error)
        finally:
            stopper.cancel()
            channel.fail_calls()
            if outcome is None:
                await end_child(process)
            else:
                await asyncio.shield(process.wait())
        if outcome is None:
            partitions = ", ".join(plan.partition for plan, _ in share)
            outcome = ReplayError(
                f"replay worker {slot} (partitions {partitions}) exited with code "
                f"{process.returncode} before it finished; what it checkpointed is kept: "
                f"continue with evalstream replay --resume {self.spec.id}"
            )
        if isinstance(outcome, StreamError):
            halt.set()
        return outcome


def _add(totals: Counter[str], seen: Counter[str], now: dict[str, int]) -> None:
    """Add a worker's counts (``now``: its run's so far) to ``totals``; ``seen``: the last."""
    for what, count in now.items():
        totals[what] += count - seen[what]
        seen[what] = count


async def _relay(stop: asyncio.Event, halt: asyncio.Event) -> None:
    await stop.wait()
    halt.set()


async def _forward_stop(channel: Channel, halt: asyncio.Event) -> None:
    await halt.wait()
    with contextlib.suppress(StreamError):  # gone: its task notices
        channel.send("stop")
        await channel.flush()
