"""A share of the embedded log's partitions, processed by one of several worker processes.

A partition is processed only by the process holding its lock file (``<n>.lock`` in the lock
folder, an exclusive ``flock``). The kernel drops a dead process's locks, and a worker reads,
processes and checkpoints a partition only while it holds the lock, so two processes never work
on one partition at once, whatever the supervisor that hands out partitions believes. The
supervisor says which partitions this worker should own (``assign``): the worker lets go of the
others after their batch in flight, closing them as on shutdown (checkpoint written, detector
snapshot saved), then drops their locks; it takes the new ones as soon as their locks are free,
and resumes each from its checkpoint and detector snapshot like a restarted processor would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from common.lock_file import try_lock
from common.log_context import log_context
from common.retry import sleep_or_stop, until_first
from stream.ports import BatchHandler
from stream.sources.local_log import LocalLog, run_partition

logger = logging.getLogger(__name__)

# How often a worker looks again at a lock another process still holds (a partition moving
# here waits for its previous owner's last batch and checkpoint).
LOCK_POLL_S = 0.05


def lock_path(folder: Path, partition: int) -> Path:
    return folder / f"{partition}.lock"


class LocalLogShare:
    """EventSource over the partitions of the local log currently assigned to this process."""

    def __init__(
        self,
        path: Path,
        partitions: int,
        consumer_group: str,
        batch_size: int,
        batch_wait_s: float,
        lock_folder: Path,
    ) -> None:
        self.path = path
        self.partitions = partitions
        self.consumer_group = consumer_group
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.lock_folder = lock_folder
        self._wanted: frozenset[int] = frozenset()
        self._changed = asyncio.Event()
        # Partitions with a task (waiting for the lock, or processing) and that task's stop.
        self._running: dict[int, asyncio.Event] = {}
        # Partitions whose lock this process holds now (for status and tests).
        self.held: set[int] = set()

    def assign(self, partitions: Iterable[int]) -> None:
        """Own these partitions from now on (and only these)."""
        wanted = frozenset(partitions)
        unknown = sorted(p for p in wanted if not 0 <= p < self.partitions)
        if unknown:
            raise ValueError(f"partitions {unknown} are not in a log of {self.partitions}")
        self._wanted = wanted
        self._changed.set()

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        log = LocalLog(self.path, self.partitions)
        try:
            async with asyncio.TaskGroup() as group:
                while not stop.is_set():
                    for partition in sorted(self._wanted - self._running.keys()):
                        halt = self._running[partition] = asyncio.Event()
                        with log_context(partition=str(partition)):  # the task keeps it
                            group.create_task(self._own(log, partition, handler, halt))
                    for partition, halt in self._running.items():
                        if partition not in self._wanted:
                            halt.set()
                    self._changed.clear()
                    await until_first(self._changed, stop)
                for halt in self._running.values():
                    halt.set()
        finally:
            await log.aclose()

    async def _own(
        self, log: LocalLog, partition: int, handler: BatchHandler, halt: asyncio.Event
    ) -> None:
        lock: IO[str] | None = None
        try:
            while (lock := try_lock(lock_path(self.lock_folder, partition))) is None:
                if await sleep_or_stop(LOCK_POLL_S, halt):
                    return
            self.held.add(partition)
            logger.info("partition lock taken", extra={"partition": str(partition)})
            await run_partition(
                log,
                self.consumer_group,
                partition,
                handler,
                halt,
                self.batch_size,
                self.batch_wait_s,
            )
        finally:
            # Only after the partition closed (its checkpoint written): the next owner reads it.
            if lock is not None:
                self.held.discard(partition)
                lock.close()
            if self._running.get(partition) is halt:
                del self._running[partition]
                # Assigned again meanwhile: the run loop starts it anew.
                self._changed.set()
