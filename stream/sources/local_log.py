"""The embedded event source: a partitioned, append-only log in one SQLite file.

Partition = stable hash of the partition key (the app_id), so one app's events stay in order in
one partition, as with Event Hubs. Each partition numbers its events from 0; consumer groups
keep their own checkpoints. One processor at a time owns a log (a file lock says so).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from common.retry import sleep_or_stop
from store.sqlite_connection import connect
from stream.exceptions import SourceError
from stream.ports import BatchHandler, CloseReason, ReceivedEvent
from stream.sources.retry import deliver

logger = logging.getLogger(__name__)

SOURCE_NAME = "local"
RETENTION_SWEEP_INTERVAL_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    partition INTEGER NOT NULL, sequence INTEGER NOT NULL, enqueued REAL NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (partition, sequence)
);
CREATE TABLE IF NOT EXISTS heads (partition INTEGER PRIMARY KEY, next_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer_group TEXT NOT NULL, partition INTEGER NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def partition_for(key: str | bytes, partitions: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % partitions


class LocalLog:
    """Opens the log file and checks it was created with the same partition count."""

    def __init__(self, path: Path, partitions: int) -> None:
        self.path = path
        self.partitions = partitions
        self._connection = connect(path)
        self._connection.executescript(_SCHEMA)
        self._check_partitions()
        self._closed = False

    def _check_partitions(self) -> None:
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        row = connection.execute("SELECT value FROM meta WHERE key = 'partitions'").fetchone()
        if row is None:
            connection.execute("INSERT INTO meta VALUES ('partitions', ?)", (str(self.partitions),))
            connection.executemany(
                "INSERT OR IGNORE INTO heads VALUES (?, 0)", [(p,) for p in range(self.partitions)]
            )
        connection.execute("COMMIT")
        if row is not None and int(row[0]) != self.partitions:
            raise SourceError(
                f"the event log {self.path} has {row[0]} partitions but "
                f"embedded.partitions is {self.partitions}: use the same setting or a new data_dir"
            )

    @property
    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise SourceError(f"event log {self.path} is closed")
        return self._connection

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._connection.close()

    def append(self, items: Sequence[tuple[str | None, bytes]]) -> list[tuple[int, int]]:
        """Append (partition key, body) pairs in one transaction; return their positions."""
        connection = self.connection
        now = time.time()
        positions: list[tuple[int, int]] = []
        connection.execute("BEGIN IMMEDIATE")
        try:
            heads = dict(
                connection.execute("SELECT partition, next_sequence FROM heads").fetchall()
            )
            rows = []
            for key, body in items:
                partition = partition_for(key if key is not None else body, self.partitions)
                sequence = heads[partition]
                heads[partition] = sequence + 1
                rows.append((partition, sequence, now, body))
                positions.append((partition, sequence))
            connection.executemany("INSERT INTO events VALUES (?, ?, ?, ?)", rows)
            connection.executemany(
                "UPDATE heads SET next_sequence = ? WHERE partition = ?",
                [(sequence, partition) for partition, sequence in heads.items()],
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")
        return positions

    def read(self, partition: int, after: int, limit: int) -> list[ReceivedEvent]:
        rows = self.connection.execute(
            "SELECT sequence, enqueued, body FROM events WHERE partition = ? AND sequence > ? "
            "ORDER BY sequence LIMIT ?",
            (partition, after, limit),
        ).fetchall()
        name = str(partition)
        # Events appended together share their enqueued time: convert each value once.
        times: dict[float, datetime] = {}
        events = []
        for sequence, enqueued, body in rows:
            when = times.get(enqueued)
            if when is None:
                when = times[enqueued] = datetime.fromtimestamp(enqueued, UTC)
            events.append(ReceivedEvent(body, name, sequence, when, str(sequence)))
        return events

    def last_sequence(self, partition: int) -> int:
        row = self.connection.execute(
            "SELECT next_sequence FROM heads WHERE partition = ?", (partition,)
        ).fetchone()
        return int(row[0]) - 1

    def checkpoint(self, consumer_group: str, partition: int) -> int:
        """The last processed sequence of a partition (-1: nothing processed yet)."""
        row = self.connection.execute(
            "SELECT sequence FROM checkpoints WHERE consumer_group = ? AND partition = ?",
            (consumer_group, partition),
        ).fetchone()
        return int(row[0]) if row else -1

    def update_checkpoint(self, consumer_group: str, partition: int, sequence: int) -> None:
        self.connection.execute(
            "INSERT INTO checkpoints VALUES (?, ?, ?) ON CONFLICT (consumer_group, partition) "
            "DO UPDATE SET sequence = excluded.sequence",
            (consumer_group, partition, sequence),
        )

    def sweep(self, retention_s: float) -> int:
        """Delete events enqueued before the retention horizon; return how many."""
        cursor = self.connection.execute(
            "DELETE FROM events WHERE enqueued < ?", (time.time() - retention_s,)
        )
        return cursor.rowcount


class LocalLogSink:
    """EventSink appending to the local log (``evalstream send``, the simulator, ingest)."""

    def __init__(self, path: Path, partitions: int) -> None:
        self.path = path
        self.partitions = partitions
        self._log: LocalLog | None = None

    async def __aenter__(self) -> LocalLogSink:
        self._log = LocalLog(self.path, self.partitions)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._log is not None:
            self._log.close()

    async def append(self, bodies: list[tuple[str | None, bytes]]) -> None:
        if self._log is None:
            raise SourceError("LocalLogSink used outside 'async with'")
        self._log.append(bodies)


class _LocalPartitionContext:
    def __init__(self, log: LocalLog, consumer_group: str, partition: int) -> None:
        self._log = log
        self._consumer_group = consumer_group
        self._partition = partition
        self.position = log.checkpoint(consumer_group, partition)

    @property
    def partition_id(self) -> str:
        return str(self._partition)

    async def checkpoint(self, event: ReceivedEvent) -> None:
        self._log.update_checkpoint(self._consumer_group, self._partition, event.sequence)

    async def last_enqueued_sequence(self) -> int | None:
        return self._log.last_sequence(self._partition)

    async def checkpointed_sequence(self) -> int | None:
        sequence = self._log.checkpoint(self._consumer_group, self._partition)
        return None if sequence < 0 else sequence


class ProcessorLock:
    """An exclusive lock file: two processors on one log would checkpoint over each other."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def __enter__(self) -> ProcessorLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise SourceError(
                f"another evalstream processor (pid {holder}) is running on {self.path.parent}"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalLogSource:
    """EventSource over the local log: one task per partition, bounded batches."""

    def __init__(
        self,
        path: Path,
        partitions: int,
        consumer_group: str,
        batch_size: int,
        batch_wait_s: float,
        retention_s: float,
    ) -> None:
        self.path = path
        self.partitions = partitions
        self.consumer_group = consumer_group
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.retention_s = retention_s

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        with ProcessorLock(self.path.with_name("processor.lock")):
            log = LocalLog(self.path, self.partitions)
            try:
                async with asyncio.TaskGroup() as group:
                    for partition in range(self.partitions):
                        group.create_task(self._run_partition(log, partition, handler, stop))
                    group.create_task(self._sweep(log, stop))
            finally:
                log.close()

    async def _run_partition(
        self, log: LocalLog, partition: int, handler: BatchHandler, stop: asyncio.Event
    ) -> None:
        context = _LocalPartitionContext(log, self.consumer_group, partition)
        await handler.on_partition_initialize(context)
        while not stop.is_set():
            events = log.read(partition, context.position, self.batch_size)
            if not events:
                await sleep_or_stop(self.batch_wait_s, stop)
                continue
            delivered = await deliver(
                functools.partial(handler.on_batch, context, events),
                partition_id=context.partition_id,
                first_sequence=events[0].sequence,
                closing=lambda: False,
                stop=stop,
            )
            if not delivered:
                break
            context.position = events[-1].sequence
        await handler.on_partition_close(context, CloseReason.SHUTDOWN)

    async def _sweep(self, log: LocalLog, stop: asyncio.Event) -> None:
        while not stop.is_set():
            deleted = log.sweep(self.retention_s)
            if deleted:
                logger.info("retention removed events", extra={"deleted": deleted})
            await sleep_or_stop(RETENTION_SWEEP_INTERVAL_S, stop)
