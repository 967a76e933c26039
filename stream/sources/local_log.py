"""The embedded event source: a partitioned, append-only log in one SQLite file.

Partition = stable hash of the partition key (the app_id), so one app's events stay in order in
one partition, as with Event Hubs. Each partition numbers its events from 0; consumer groups
keep their own checkpoints. One processor at a time owns a log (a file lock says so).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from common.errors import is_retryable
from common.lock_file import try_lock
from common.log_context import log_context
from common.repeated import RepeatedFailure
from common.retry import sleep_or_stop
from common.sqlite import SqliteFile, connect_read_only, sqlite3, transaction
from common.turns import Turns
from schemas import TelemetryEvent
from stream.delivery import deliver
from stream.exceptions import SourceError
from stream.ports import Backlog, BatchHandler, CloseReason, ReceivedEvent, Rejected, received
from stream.privacy import LogItem, Pseudonymizer

logger = logging.getLogger(__name__)

T = TypeVar("T")

SOURCE_NAME = "local"
RETENTION_SWEEP_INTERVAL_S = 60.0
# How often a partition's progress is written: ingest paces and refuses posts by the backlog it
# gives, which may lag by this much processing (the checkpoints alone lagged by a second).
PROGRESS_INTERVAL_S = 0.05
# Progress writes and sweeps failing for a passing cause (a full disk) are retried later, and
# said once for all partitions (then reminded, then their end).
PROGRESS_FAILURES = RepeatedFailure("event log progress writes", logger)
SWEEP_FAILURES = RepeatedFailure("event log retention sweeps", logger)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    partition INTEGER NOT NULL, sequence INTEGER NOT NULL, enqueued REAL NOT NULL,
    body BLOB NOT NULL, user TEXT, PRIMARY KEY (partition, sequence)
);
-- Replays find a time range's first and last events by it (covering: no row is read).
CREATE INDEX IF NOT EXISTS events_enqueued ON events (partition, enqueued, sequence);
CREATE TABLE IF NOT EXISTS heads (partition INTEGER PRIMARY KEY, next_sequence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    consumer_group TEXT NOT NULL, partition INTEGER NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- How far a consumer group has stored each partition: written after its batches (at most every
-- PROGRESS_INTERVAL_S), ahead of its checkpoint, which waits for a detector snapshot. Read for
-- the backlog only; a restart resumes from the checkpoint.
CREATE TABLE IF NOT EXISTS progress (
    consumer_group TEXT NOT NULL, partition INTEGER NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition)
) WITHOUT ROWID;
"""
# ``user``: (user_hash, document id) of a body logged without its user_id, as "<hash> <id>"
# (see stream.privacy), NULL for every other body. Logs made before it get the column on open.
_USER_COLUMN = "ALTER TABLE events ADD COLUMN user TEXT"


def partition_for(key: str | bytes, partitions: int) -> int:
    """Stable across processes and Python versions (unlike ``hash``)."""
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big") % partitions


def item_partition(key: str | None, body: bytes, partitions: int) -> int:
    """The partition a log item goes to: its key's, or its body's when it has none."""
    return partition_for(key if key is not None else body, partitions)


# The log's queries: plain functions of a connection, run on the file's worker thread (from
# the source and sink) or on the caller's thread (CLI, scripts) by LocalLog.


def _check_partitions(connection: sqlite3.Connection, partitions: int) -> int:
    """Record the partition count of a new log; return the count the log was created with."""
    with transaction(connection):
        columns = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
        if "user" not in columns:
            connection.execute(_USER_COLUMN)
        created_with = _recorded_partitions(connection)
        if created_with is None:
            connection.execute("INSERT INTO meta VALUES ('partitions', ?)", (str(partitions),))
            connection.executemany(
                "INSERT OR IGNORE INTO heads VALUES (?, 0)", [(p,) for p in range(partitions)]
            )
            return partitions
    return created_with


def _recorded_partitions(connection: sqlite3.Connection) -> int | None:
    row = connection.execute("SELECT value FROM meta WHERE key = 'partitions'").fetchone()
    return int(row[0]) if row is not None else None


def _append(
    connection: sqlite3.Connection, items: Sequence[LogItem], partitions: int
) -> list[tuple[int, int]]:
    now = time.time()
    positions: list[tuple[int, int]] = []
    with transaction(connection):
        heads = dict(connection.execute("SELECT partition, next_sequence FROM heads").fetchall())
        rows = []
        for key, body, *user in items:
            partition = item_partition(key, body, partitions)
            sequence = heads[partition]
            heads[partition] = sequence + 1
            pseudonym = " ".join(user[0]) if user and user[0] is not None else None
            rows.append((partition, sequence, now, body, pseudonym))
            positions.append((partition, sequence))
        connection.executemany(
            "INSERT INTO events (partition, sequence, enqueued, body, user) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
        connection.executemany(
            "UPDATE heads SET next_sequence = ? WHERE partition = ?",
            [(sequence, partition) for partition, sequence in heads.items()],
        )
    return positions


def _read(
    connection: sqlite3.Connection, partition: int, after: int, limit: int
) -> list[ReceivedEvent]:
    rows = connection.execute(
        "SELECT sequence, enqueued, body, user FROM events WHERE partition = ? AND sequence > ? "
        "ORDER BY sequence LIMIT ?",
        (partition, after, limit),
    ).fetchall()
    return _received(partition, rows)


# The key a newest-first read starts below: above every (enqueued, sequence).
NEWEST = (float("inf"), 0)


def _read_newest_first(
    connection: sqlite3.Connection,
    partition: int,
    last: int,
    below: tuple[float, int],
    limit: int,
) -> tuple[list[ReceivedEvent], tuple[float, int]]:
    # By the enqueued-time index: newest first even where the enqueued times are out of
    # sequence order (appenders' clocks taken before their transactions).
    rows = connection.execute(
        "SELECT sequence, enqueued, body, user FROM events WHERE partition = ? AND sequence <= ? "
        "AND (enqueued, sequence) < (?, ?) ORDER BY enqueued DESC, sequence DESC LIMIT ?",
        (partition, last, *below, limit),
    ).fetchall()
    # The next page's key as stored: a datetime rounds the enqueued time to microseconds.
    return _received(partition, rows), ((rows[-1][1], rows[-1][0]) if rows else below)


def _received(
    partition: int, rows: list[tuple[int, float, bytes, str | None]]
) -> list[ReceivedEvent]:
    name = str(partition)
    # Events appended together share their enqueued time: convert each value once.
    times: dict[float, datetime] = {}
    events = []
    for sequence, enqueued, body, user in rows:
        when = times.get(enqueued)
        if when is None:
            when = times[enqueued] = datetime.fromtimestamp(enqueued, UTC)
        if user is None:
            events.append(received(body, name, sequence, when, str(sequence)))
        else:
            user_hash, _, document = user.partition(" ")
            events.append(
                received(body, name, sequence, when, str(sequence), (user_hash, document))
            )
    return events


def _last_sequence(connection: sqlite3.Connection, partition: int) -> int:
    row = connection.execute(
        "SELECT next_sequence FROM heads WHERE partition = ?", (partition,)
    ).fetchone()
    return int(row[0]) - 1


def _sequences_between(
    connection: sqlite3.Connection, partition: int, start: float, end: float | None
) -> tuple[int | None, int | None]:
    """The first and last sequence of the partition's events with ``start ≤ enqueued < end``
    (no end: up to the newest); (None, None) when there is none."""
    row = connection.execute(
        "SELECT MIN(sequence), MAX(sequence) FROM events "
        "WHERE partition = ? AND enqueued >= ? AND enqueued < ?",
        (partition, start, float("inf") if end is None else end),
    ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def _raise_head(connection: sqlite3.Connection, partition: int, next_sequence: int) -> None:
    connection.execute(
        "UPDATE heads SET next_sequence = ? WHERE partition = ? AND next_sequence < ?",
        (next_sequence, partition, next_sequence),
    )


def _first_kept(connection: sqlite3.Connection, partition: int) -> int:
    """The lowest sequence the log still holds of the partition; its next one when retention
    removed them all."""
    (first,) = connection.execute(
        "SELECT MIN(sequence) FROM events WHERE partition = ?", (partition,)
    ).fetchone()
    if first is not None:
        return int(first)
    head = connection.execute(
        "SELECT next_sequence FROM heads WHERE partition = ?", (partition,)
    ).fetchone()
    return int(head[0]) if head else 0


def _checkpoint(connection: sqlite3.Connection, consumer_group: str, partition: int) -> int:
    row = connection.execute(
        "SELECT sequence FROM checkpoints WHERE consumer_group = ? AND partition = ?",
        (consumer_group, partition),
    ).fetchone()
    return int(row[0]) if row else -1


def _backlog(connection: sqlite3.Connection, consumer_group: str) -> Backlog:
    row = connection.execute(
        "SELECT SUM(MAX(0, next_sequence - 1 - done)), SUM(done + 1) FROM (SELECT "
        "heads.next_sequence, MAX(COALESCE(checkpoints.sequence, -1), "
        "COALESCE(progress.sequence, -1)) AS done FROM heads "
        "LEFT JOIN checkpoints ON checkpoints.consumer_group = ?1 "
        "AND checkpoints.partition = heads.partition "
        "LEFT JOIN progress ON progress.consumer_group = ?1 "
        "AND progress.partition = heads.partition)",
        (consumer_group,),
    ).fetchone()
    return Backlog(int(row[0] or 0), int(row[1] or 0))


# A partition's position in ``checkpoints`` or ``progress`` (both keyed the same way).
_SET_POSITION = (
    "INSERT INTO {} VALUES (?, ?, ?) ON CONFLICT (consumer_group, partition) "
    "DO UPDATE SET sequence = excluded.sequence"
)
_SET_CHECKPOINT = _SET_POSITION.format("checkpoints")
_SET_PROGRESS = _SET_POSITION.format("progress")


def _set_position(
    connection: sqlite3.Connection,
    statement: str,
    consumer_group: str,
    partition: int,
    sequence: int,
) -> None:
    connection.execute(statement, (consumer_group, partition, sequence))


def _sweep(connection: sqlite3.Connection, retention_s: float, consumer_group: str) -> int:
    # Only what the consumer group has checkpointed: an event enqueued under a clock that was
    # behind, or read after the clock jumped ahead, looks past retention before it is
    # processed, and it was acknowledged (a partition left with nothing to read after its
    # checkpoint also never caught up with its head).
    horizon = time.time() - retention_s
    deleted = 0
    with transaction(connection):
        for partition, sequence in connection.execute(
            "SELECT partition, sequence FROM checkpoints WHERE consumer_group = ?",
            (consumer_group,),
        ).fetchall():
            deleted += connection.execute(
                "DELETE FROM events WHERE partition = ? AND sequence <= ? AND enqueued < ?",
                (partition, sequence, horizon),
            ).rowcount
    return deleted


def created_partitions(path: Path) -> int | None:
    """The partition count an existing log was created with; None when there is no log yet, or
    it cannot be read here (opening it as LocalLog then reports why)."""
    if not path.is_file():
        return None
    try:
        connection = connect_read_only(path)
        try:
            return _recorded_partitions(connection)
        finally:
            connection.close()
    except sqlite3.Error:
        return None


class LocalLog:
    """Opens the log file and checks it was created with the same partition count.

    The plain methods block the calling thread (CLI, scripts, tests); their ``_async`` forms
    run on the file's worker thread, so the event loop never waits on SQLite. ``sqlite3``
    errors come out as SourceError (retryable when the cause is passing: locked, busy, full).
    """

    def __init__(self, path: Path, partitions: int, *, read_only: bool = False) -> None:
        """``read_only``: an existing log, only read (status: the data dir unchanged)."""
        self.path = path
        self.partitions = partitions
        self._file = SqliteFile(path, error_type=SourceError, schema=_SCHEMA, read_only=read_only)
        try:
            created_with = self._file.run_blocking(
                _recorded_partitions
                if read_only
                else functools.partial(_check_partitions, partitions=partitions),
                "open the event log",
            )
            if created_with is None:  # read only, and nothing recorded: an empty log
                created_with = partitions
        except BaseException:
            self._file.close()
            raise
        if created_with != partitions:
            self._file.close()
            raise SourceError(
                f"the event log {path} has {created_with} partitions but "
                f"embedded.partitions is {partitions}: use the same setting or a new data_dir"
            )

    def close(self) -> None:
        self._file.close()

    async def aclose(self) -> None:
        await self._file.aclose()

    def _blocking(self, what: str, call: Callable[..., T], /, *args: object) -> T:
        return self._file.run_blocking(lambda connection: call(connection, *args), what)

    async def _async(self, what: str, call: Callable[..., T], /, *args: object) -> T:
        return await self._file.run(lambda connection: call(connection, *args), what)

    def append(self, items: Sequence[LogItem | tuple[str | None, bytes]]) -> list[tuple[int, int]]:
        """Append (partition key, body[, user]) items in one transaction; return their
        positions. Bodies are kept as given: producers go through LocalLogSink."""
        return self._blocking("append to the event log", _append, items, self.partitions)

    async def append_async(
        self, items: Sequence[LogItem | tuple[str | None, bytes]]
    ) -> list[tuple[int, int]]:
        return await self._async("append to the event log", _append, items, self.partitions)

    def read(self, partition: int, after: int, limit: int) -> list[ReceivedEvent]:
        """Up to ``limit`` events of ``partition`` after sequence ``after``, in order."""
        return self._blocking("read the event log", _read, partition, after, limit)

    async def read_async(self, partition: int, after: int, limit: int) -> list[ReceivedEvent]:
        return await self._async("read the event log", _read, partition, after, limit)

    async def read_newest_first_async(
        self, partition: int, last: int, below: tuple[float, int], limit: int
    ) -> tuple[list[ReceivedEvent], tuple[float, int]]:
        """Up to ``limit`` events of ``partition`` at or before sequence ``last``, newest
        enqueued first (then highest sequence), of those below the (enqueued POSIX time,
        sequence) key ``below`` (NEWEST: from the newest); and the key to read on below."""
        return await self._async(
            "read the event log", _read_newest_first, partition, last, below, limit
        )

    async def sequences_between_async(
        self, partition: int, start: datetime, end: datetime | None
    ) -> tuple[int | None, int | None]:
        """First and last sequence of the events enqueued in [start, end) (None, None: none)."""
        return await self._async(
            "find a time range in the event log",
            _sequences_between,
            partition,
            start.timestamp(),
            None if end is None else end.timestamp(),
        )

    def last_sequence(self, partition: int) -> int:
        return self._blocking("read the log head", _last_sequence, partition)

    async def last_sequence_async(self, partition: int) -> int:
        return await self._async("read the log head", _last_sequence, partition)

    async def first_kept_async(self, partition: int) -> int:
        return await self._async("read the oldest event kept", _first_kept, partition)

    async def raise_head_async(self, partition: int, next_sequence: int) -> None:
        """New events of the partition get ``next_sequence`` or later (never a used number)."""
        await self._async("raise the log head", _raise_head, partition, next_sequence)

    def checkpoint(self, consumer_group: str, partition: int) -> int:
        """The last processed sequence of a partition (-1: nothing processed yet)."""
        return self._blocking("read a checkpoint", _checkpoint, consumer_group, partition)

    async def checkpoint_async(self, consumer_group: str, partition: int) -> int:
        return await self._async("read a checkpoint", _checkpoint, consumer_group, partition)

    async def backlog_async(self, consumer_group: str) -> int:
        """Events of every partition after what ``consumer_group`` checkpointed or stored."""
        return (await self.position_async(consumer_group)).waiting

    async def position_async(self, consumer_group: str) -> Backlog:
        return await self._async("read the backlog", _backlog, consumer_group)

    async def update_progress_async(
        self, consumer_group: str, partition: int, sequence: int
    ) -> None:
        """``consumer_group`` has stored ``partition`` up to ``sequence`` (not a checkpoint)."""
        await self._async(
            "write the progress", _set_position, _SET_PROGRESS, consumer_group, partition, sequence
        )

    async def update_checkpoint_async(
        self, consumer_group: str, partition: int, sequence: int
    ) -> None:
        await self._async(
            "write a checkpoint",
            _set_position,
            _SET_CHECKPOINT,
            consumer_group,
            partition,
            sequence,
        )

    async def sweep_async(self, retention_s: float, consumer_group: str) -> int:
        """Delete events enqueued before the retention horizon that ``consumer_group`` has
        checkpointed; return how many."""
        return await self._async("sweep the event log", _sweep, retention_s, consumer_group)


class LocalLogSink:
    """EventSink appending to the local log (``evalstream send``, the simulator, ingest).

    With a Pseudonymizer (as the commands build it) no raw user_id reaches the file. With
    ``covered`` (per partition, the last position the store holds: its snapshot's, or a
    document's or record's written after it, as the commands give it) a log that lost its last
    events (a power cut) numbers new ones after what the store holds before the first append:
    the processor skips numbers its snapshot covers, and a number the store holds a record of
    is never given to another event (its quarantine record would be replaced). It logs
    refusals (``logs_refusals``) with a Pseudonymizer only: their user ids are hashed."""

    def __init__(
        self,
        path: Path,
        partitions: int,
        pseudonymizer: Pseudonymizer | None = None,
        covered: Callable[[], Awaitable[dict[int, int]]] | None = None,
    ) -> None:
        self.path = path
        self.partitions = partitions
        self.pseudonymizer = pseudonymizer
        self.covered = covered
        self._log: LocalLog | None = None

    async def __aenter__(self) -> LocalLogSink:
        self._log = LocalLog(self.path, self.partitions)
        try:
            if self.covered is not None:
                await self._number_after(self._log, await self.covered())
        except BaseException:
            await self._log.aclose()
            raise
        return self

    async def _number_after(self, log: LocalLog, covered: dict[int, int]) -> None:
        for partition, sequence in covered.items():
            last = await log.last_sequence_async(partition)
            if last < sequence:
                await log.raise_head_async(partition, sequence + 1)
                logger.error(
                    "the event log ends at sequence %d but the store holds events up to %d: the "
                    "log lost events (a power cut?); new events are numbered after them",
                    last,
                    sequence,
                    extra={"partition": str(partition)},
                )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._log is not None:
            await self._log.aclose()

    @property
    def _opened(self) -> LocalLog:
        if self._log is None:
            raise SourceError("LocalLogSink used outside 'async with'")
        return self._log

    async def backlog(self, consumer_group: str) -> Backlog:
        """Events appended but not yet done by ``consumer_group`` (the processor), and done."""
        return await self._opened.position_async(consumer_group)

    @property
    def logs_refusals(self) -> bool:
        return self.pseudonymizer is not None

    async def append(
        self,
        bodies: list[tuple[str | None, bytes]],
        validated: Sequence[tuple[TelemetryEvent, str]] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> None:
        log = self._opened
        pseudonymizer = self.pseudonymizer
        if pseudonymizer is None:
            if refused:
                raise ValueError("a LocalLogSink without a Pseudonymizer logs no refusals")
            await log.append_async(bodies)
            return
        items = (
            pseudonymizer.items(bodies)
            if validated is None
            else pseudonymizer.validated_items(bodies, validated)
        )
        if refused:
            # First: in a partition, a request's records come before its events, as when
            # ingest wrote them to the store before appending the events.
            items[:0] = [pseudonymizer.refused_item(None, rejected) for rejected in refused]
        await log.append_async(items)


class _LocalPartitionContext:
    rewindable = True

    def __init__(self, log: LocalLog, consumer_group: str, partition: int, position: int) -> None:
        self._log = log
        self._consumer_group = consumer_group
        self._partition = partition
        self.position = position

    @property
    def partition_id(self) -> str:
        return str(self._partition)

    async def checkpoint(self, event: ReceivedEvent) -> None:
        await self._log.update_checkpoint_async(
            self._consumer_group, self._partition, event.sequence
        )

    async def owned(self) -> bool:
        # One processor per log (ProcessorLock): its partitions are never taken over.
        return True

    async def last_enqueued_sequence(self) -> int | None:
        return await self._log.last_sequence_async(self._partition)

    async def checkpointed_sequence(self) -> int | None:
        sequence = await self._log.checkpoint_async(self._consumer_group, self._partition)
        return None if sequence < 0 else sequence

    async def resume_after(self, sequence: int) -> bool:
        first = await self._log.first_kept_async(self._partition)
        if first > sequence + 1:
            # A store put back from a copy older than the log's retention: what it lost there
            # is gone for good (the reading resumes at the oldest event kept).
            logger.error(
                "partition %d: sequences %d-%d are no longer in the event log (retention removed "
                "them): the %d events the store lost there cannot be read again",
                self._partition,
                sequence + 1,
                first - 1,
                first - 1 - sequence,
                extra={"partition": self.partition_id},
            )
            # Nothing to wait for there: the lag and --until-idle count from what is kept.
            sequence = first - 1
        await self._log.raise_head_async(self._partition, sequence + 1)
        # The checkpoint follows: never ahead of what the store holds, never behind new events.
        await self._log.update_checkpoint_async(self._consumer_group, self._partition, sequence)
        self.position = sequence
        return True


# The lock file beside the log, held by the one processor of a data dir.
PROCESSOR_LOCK = "processor.lock"


class ProcessorLock:
    """An exclusive lock file: two processors on one log would checkpoint over each other."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def __enter__(self) -> ProcessorLock:
        handle = try_lock(self.path)
        if handle is None:
            holder = self.path.read_text().strip() or "unknown"
            raise SourceError(
                f"another evalstream processor (pid {holder}) is running on {self.path.parent}"
            )
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
        with ProcessorLock(self.path.with_name(PROCESSOR_LOCK)):
            log = LocalLog(self.path, self.partitions)
            try:
                async with asyncio.TaskGroup() as group:
                    for partition in range(self.partitions):
                        with log_context(partition=str(partition)):  # the task keeps it
                            group.create_task(self._run_partition(log, partition, handler, stop))
                    group.create_task(self._sweep(log, stop))
            finally:
                await log.aclose()

    async def _run_partition(
        self, log: LocalLog, partition: int, handler: BatchHandler, stop: asyncio.Event
    ) -> None:
        await run_partition(
            log, self.consumer_group, partition, handler, stop, self.batch_size, self.batch_wait_s
        )

    async def _sweep(self, log: LocalLog, stop: asyncio.Event) -> None:
        await sweep_until_stopped(log, self.retention_s, self.consumer_group, stop)


async def run_partition(
    log: LocalLog,
    consumer_group: str,
    partition: int,
    handler: BatchHandler,
    stop: asyncio.Event,
    batch_size: int,
    batch_wait_s: float,
) -> None:
    """Deliver one partition's batches to ``handler`` from its checkpoint on until ``stop``;
    then close it as on shutdown (its last batch done, its checkpoint written)."""
    position = await log.checkpoint_async(consumer_group, partition)
    context = _LocalPartitionContext(log, consumer_group, partition, position)
    await handler.on_partition_initialize(context)
    turns = Turns()
    progress_at = time.monotonic()
    key = f"partition {partition}"
    while not stop.is_set():
        events = await log.read_async(partition, context.position, batch_size)
        if not events:
            await handler.on_idle(context)
            await sleep_or_stop(batch_wait_s, stop)
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
        if time.monotonic() - progress_at >= PROGRESS_INTERVAL_S:
            progress_at = time.monotonic()
            try:
                await log.update_progress_async(consumer_group, partition, context.position)
            except SourceError as exc:
                # Only a hint for the backlog (not a checkpoint): a full disk must not stop the
                # partition over it. The next batch's writes it again.
                if not is_retryable(exc):
                    raise
                PROGRESS_FAILURES.failed(key, exc)
            else:
                PROGRESS_FAILURES.succeeded(key)
        await turns.take()
    PROGRESS_FAILURES.given_up(key)
    await handler.on_partition_close(context, CloseReason.SHUTDOWN)


async def sweep_until_stopped(
    log: LocalLog, retention_s: float, consumer_group: str, stop: asyncio.Event
) -> None:
    """Delete events past retention that ``consumer_group`` has checkpointed, now and then
    (one process per log does it)."""
    while not stop.is_set():
        try:
            deleted = await log.sweep_async(retention_s, consumer_group)
        except SourceError as exc:
            # Deleting needs room too (the log's journal): a full disk waits for the next sweep.
            if not is_retryable(exc):
                raise
            SWEEP_FAILURES.failed("the event log", exc, RETENTION_SWEEP_INTERVAL_S)
        else:
            SWEEP_FAILURES.succeeded("the event log")
            if deleted:
                logger.info("retention removed events", extra={"deleted": deleted})
        await sleep_or_stop(RETENTION_SWEEP_INTERVAL_S, stop)
