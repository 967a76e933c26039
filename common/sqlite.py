"""The one way evalstream uses SQLite: how a file is opened and tuned, how blocking calls leave
the event loop, how ``sqlite3`` errors become the caller's own errors.

Every SQLite adapter (store, alert topic, local event log, cold-path progress) holds a
``SqliteFile`` and does its work in plain functions of a ``sqlite3.Connection`` passed to
``run`` (from async code) or ``run_blocking`` (from sync code), one call at a time. Errors come
out as the adapter's error type.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from common.errors import EvalstreamError, UnusableFile

# The SQLite library every module (tests and benchmarks too) imports from here, never the
# standard library's ``sqlite3``: Python's ``sqlite3`` module built against a SQLite of its own
# (pysqlite3's wheels bundle one), because the SQLite that Python and Debian ship (3.40) has the
# WAL-reset bug (https://sqlite.org/wal.html#walresetbug, fixed in 3.51.3): with several
# processes writing one file and checkpointing it, a checkpoint can skip part of the WAL and
# committed transactions are lost. Processing workers and ingest share files in exactly that
# way (a two-writer test once counted 40 of 1,600 committed transactions missing, on 3.40.1).
# One library per process: two SQLite copies in one process do not see each other's POSIX
# locks on a file, and closing a file in one drops the other's locks.
if TYPE_CHECKING:
    # The same module's API, for the type checker (pysqlite3 has no stubs).
    import sqlite3 as sqlite3
else:
    from pysqlite3 import dbapi2 as sqlite3

# The first release of each line with the WAL-reset fix: 3.44.6 and 3.50.7 are backports, every
# release from 3.51.3 has it.
WAL_RESET_BACKPORTS = {(3, 44): (3, 44, 6), (3, 50): (3, 50, 7)}
WAL_RESET_FIXED_IN = (3, 51, 3)

T = TypeVar("T")

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
# SQLite's page cache, per connection (a processing worker holds a few). It fills as the files
# grow and is then reused: 32 MiB kept a worker's resident memory climbing for the first ten
# minutes of a sustained load; with 8 MiB it levels off after ~5 minutes, at no measurable
# cost in throughput (bench/results/workers_sustained.md; readings in bench/NOTES.md).
CACHE_KIB = 8 * 1024
# Pages of new files. Rows here are ~1-2 KB JSON documents or event bodies: with SQLite's
# 4 KiB default only two fit a page, and an upsert batch costs ~25% more CPU (splits, WAL
# frames, checkpoint copies) than with 16 KiB pages (measured, bench/results/processor.md).
DEFAULT_PAGE_SIZE = 16 * 1024

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# Messages of OperationalError that describe a passing condition: another process holds the
# write lock, or the disk is full or failing for now. Anything else (constraint, corrupt file,
# bad SQL) will fail the same way again.
_TRANSIENT = ("locked", "busy", "disk is full", "disk i/o error", "unable to open")
# Messages of a file that is no database of ours (SQLITE_NOTADB, SQLITE_CORRUPT): an operator
# has to replace it, as a wrong setting (exit 2).
_UNUSABLE = ("file is not a database", "database disk image is malformed")

# Rows changed between two WAL checkpoints. SQLite's own automatic checkpoint (1,000 pages) runs
# inside whichever commit crosses it, fsync included; ``SqliteFile`` turns it off and runs the
# checkpoint itself, on a thread of its own, after about as much work (~1-2 KB rows: 10-20 MB).
CHECKPOINT_EVERY_CHANGES = 10_000
# Past this size the WAL is started over (see SqliteFile._checkpoint_if_due).
WAL_SIZE_LIMIT = 64 * 1024 * 1024
# A restarted WAL file larger than this is cut back to it (SQLite's journal_size_limit): its size
# on disk stays bounded, not at the largest it ever was. Not at WAL_SIZE_LIMIT itself: the WAL
# grows on while a restart waits (to 110-155 MB with two processing workers), and cutting it
# back every time made the first commit after each restart free the blocks (a synchronous
# discard on this machine's disk) and the next ones allocate them again, with the write lock
# held: 2-worker processing went from 23,947 to 25,176 events/s with the file kept (5 paired
# runs, medians).
WAL_KEPT_SIZE = 4 * WAL_SIZE_LIMIT
# How long that restart keeps trying while another writer or a reader of an older snapshot is in
# its way, and how long it pauses between tries (holding nothing).
CHECKPOINT_WAIT_MS = 250
RESTART_RETRY_S = 0.002
# How often a call waiting for another process's write lock tries it. SQLite's own busy handler
# sleeps longer the longer it waits (up to 100 ms a turn): an ingest append that met a lock held
# for ~20 ms came back after 60-200 ms (measured), several posts at once.
LOCK_POLL_S = 0.001
# Passive checkpoints before that restart (``SqliteFile._catch_up``): at most this many more, until
# one copies at most this many frames.
CATCH_UP_PASSES = 3
CATCH_UP_FRAMES = 256


def has_wal_reset_fix(version: tuple[int, int, int]) -> bool:
    """Whether SQLite ``version`` has the WAL-reset fix (https://sqlite.org/wal.html#walresetbug)."""
    backport = WAL_RESET_BACKPORTS.get(version[:2])
    return version >= (backport or WAL_RESET_FIXED_IN)


_warned_of_wal_reset_bug = False


def _warn_of_wal_reset_bug() -> None:
    """Once per process, when the linked SQLite lacks the fix: pysqlite3 built from source (no
    wheel for the platform) links the system's SQLite, which may be older."""
    global _warned_of_wal_reset_bug
    if _warned_of_wal_reset_bug or has_wal_reset_fix(sqlite3.sqlite_version_info):
        return
    _warned_of_wal_reset_bug = True
    log.warning(
        "SQLite %s has the WAL-reset bug (fixed in %s): processes sharing a file "
        "(processing workers, ingest) can lose committed transactions; install a pysqlite3 "
        "build with a newer SQLite (its wheels bundle one)",
        sqlite3.sqlite_version,
        ".".join(map(str, WAL_RESET_FIXED_IN)),
    )


def connect(
    path: Path,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    synchronous: Synchronous = "NORMAL",
    busy_timeout_s: float = BUSY_TIMEOUT_S,
    check_same_thread: bool = False,
) -> sqlite3.Connection:
    """Open (creating folders) a SQLite file for concurrent use by several processes.

    WAL lets readers and one writer work at once; synchronous=NORMAL in WAL mode keeps every
    committed transaction across a process crash (kill -9), which is the failure the
    processor's checkpoint-last ordering is built for. Power loss may drop the last commits.
    ``page_size`` applies to files this call creates (SQLite keeps an existing file's).
    Autocommit mode (``isolation_level=None``): transactions are explicit, see ``transaction``.
    """
    _warn_of_wal_reset_bug()
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    # Before journal_mode: a new file gets its page size when its first page is written.
    connection.execute(f"PRAGMA page_size={int(page_size)}")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute(f"PRAGMA synchronous={synchronous}")
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    connection.execute(f"PRAGMA journal_size_limit={WAL_KEPT_SIZE}")
    return connection


def connect_read_only(
    path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S, check_same_thread: bool = False
) -> sqlite3.Connection:
    """Open an existing file only to read it, changing nothing in its folder (read-only
    commands). ``mode=ro``; and ``immutable`` when it has no ``-wal`` or ``-shm`` beside it:
    then no connection has it open (the first one makes them, the last one removes them), and
    a read-only connection would make both and could not remove them when it closes."""
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    flags = "mode=ro" if any(file.exists() for file in beside) else "mode=ro&immutable=1"
    connection = sqlite3.connect(
        f"{path.resolve().as_uri()}?{flags}",
        uri=True,
        timeout=busy_timeout_s,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    connection.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    # Tables of a file made before them (below) stay in memory, never in a file of /tmp.
    connection.execute("PRAGMA temp_store=MEMORY")
    return connection


def _stand_in_for_missing_tables(connection: sqlite3.Connection, schema: str) -> None:
    """Empty TEMP tables for the ``schema``'s tables the file does not have (made before them,
    e.g. a store the cold path never wrote to): a read of them finds nothing, as it would
    once they are made, instead of failing."""
    present = {
        row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
    }
    statement = ""
    for line in schema.splitlines(keepends=True):
        statement += line
        if not sqlite3.complete_statement(statement):
            continue
        words = statement.split()
        if words[:5] == ["CREATE", "TABLE", "IF", "NOT", "EXISTS"]:
            name = words[5].split("(")[0]
            if name not in present:
                connection.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
        statement = ""


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: BEGIN IMMEDIATE takes the write lock up front, so a busy file makes
    us wait (busy timeout) at BEGIN rather than fail halfway with a read lock that cannot be
    upgraded. Rolled back on any exception, committed otherwise."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, ...): then there is nothing
        # to roll back, and trying would hide the original error.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def map_error(
    exc: sqlite3.Error,
    what: str,
    error_type: type[EvalstreamError],
    transient_type: type[EvalstreamError] | None = None,
) -> EvalstreamError:
    """The adapter's error for a ``sqlite3`` error; the caller raises it ``from exc``.

    A passing cause (locked, busy, disk full) is retryable, and of ``transient_type`` when the
    adapter has a type of its own for "try again later"."""
    text = str(exc)
    if any(marker in text.lower() for marker in _UNUSABLE):
        return _unusable(error_type)(
            f"{what}: SQLite: {text}; restore the file, or move it away to start afresh"
        )
    transient = isinstance(exc, sqlite3.OperationalError) and any(
        marker in text.lower() for marker in _TRANSIENT
    )
    kind = transient_type if transient and transient_type is not None else error_type
    return kind(f"{what}: SQLite: {text}", retryable=transient)


_UNUSABLE_TYPES: dict[type[EvalstreamError], type[EvalstreamError]] = {}


def _unusable(error_type: type[EvalstreamError]) -> type[EvalstreamError]:
    """``error_type`` mixed with UnusableFile (one class per adapter error): callers catching
    the adapter's error still do, and the command line answers it as every Misconfigured
    (one line, exit 2)."""
    if issubclass(error_type, UnusableFile):
        return error_type
    if error_type not in _UNUSABLE_TYPES:
        _UNUSABLE_TYPES[error_type] = type(error_type.__name__, (error_type, UnusableFile), {})
    return _UNUSABLE_TYPES[error_type]


class SqliteFile:
    """One SQLite file, opened with ``connect`` and the adapter's ``schema``.

    ``run`` (async callers) does the call on the calling thread; when the file is busy
    (another process holds the write lock) it waits on this file's single worker thread and
    tries again, so the event loop never sleeps on another process's write lock. Calls stay on
    the loop's thread because the sqlite3 module releases the GIL around each row step: on a
    second thread the hand-offs cost ~20% more CPU per processed event (measured,
    bench/results/layout_processor.md), and a transaction held the write lock longer (see
    ``_wait_until_free``).
    ``run_blocking`` does the work on the calling thread for sync callers. ``read_only``: an
    existing file opened to read only (``connect_read_only``), the schema's missing tables
    standing in empty, nothing written in its folder. Both map ``sqlite3``
    errors to ``error_type`` (passing causes to ``transient_type``, if given). WAL checkpoints
    due after ``run`` calls happen on a thread and connection of their own (see
    ``_checkpoint_apart``); after ``run_blocking`` calls, on the caller's thread. Never inside a
    call made from the loop. Closing twice is harmless; use after close raises.
    """

    def __init__(
        self,
        path: Path,
        *,
        error_type: type[EvalstreamError],
        transient_type: type[EvalstreamError] | None = None,
        schema: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        read_only: bool = False,
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.error_type = error_type
        self.transient_type = transient_type
        self._busy_timeout_ms = int(busy_timeout_s * 1000)
        self._synchronous: Synchronous = synchronous
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._closed = False
        self._checkpoint_queued = False
        # The checkpoints' own thread and connection (opened at the first), and the lock that
        # keeps closing from pulling the connection out from under a checkpoint.
        self._checkpointer = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"sqlite-checkpoint-{path.name}"
        )
        self._checkpoint_lock = threading.Lock()
        self._checkpoint_connection: sqlite3.Connection | None = None
        # Waits for another process's write lock (``_wait_until_free``), opened at the first,
        # and the lock that keeps closing from pulling it out from under a wait.
        self._probe: sqlite3.Connection | None = None
        self._probe_lock = threading.Lock()
        connection: sqlite3.Connection | None = None
        try:
            if read_only:
                if not path.is_file():
                    raise sqlite3.OperationalError(f"no such file: {path}")
                connection = connect_read_only(path, busy_timeout_s=busy_timeout_s)
                _stand_in_for_missing_tables(connection, schema)
            else:
                connection = connect(
                    path,
                    page_size=page_size,
                    synchronous=synchronous,
                    busy_timeout_s=busy_timeout_s,
                )
                connection.execute("PRAGMA wal_autocheckpoint=0")
                if schema:
                    connection.executescript(schema)
        except sqlite3.Error as exc:
            if connection is not None:
                connection.close()
            self._executor.shutdown(wait=False)
            self._checkpointer.shutdown(wait=False)
            raise map_error(exc, f"opening {path}", error_type, transient_type) from exc
        self._connection = connection
        self._changes_at_checkpoint = connection.total_changes
        self._page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])

    @property
    def closed(self) -> bool:
        return self._closed

    def run_blocking(self, call: Callable[[sqlite3.Connection], T], what: str = "query") -> T:
        """Run ``call(connection)`` on this thread; ``sqlite3`` errors become ``error_type``."""
        with self._lock:
            result = self._call(call, what)
            self._checkpoint_if_due()
            return result

    def _call(self, call: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``call(connection)`` with the busy timeout; called holding the lock."""
        if self._closed:
            raise self.error_type(f"{what}: {self.path} is closed")
        try:
            return call(self._connection)
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc

    async def run(self, call: Callable[[sqlite3.Connection], T], what: str = "query") -> T:
        """``call(connection)`` on the calling thread, without blocking the event loop: a file
        found busy is waited for on the worker thread (``_wait_until_free``), then the call is
        tried again here; busy past the busy timeout, it fails as a busy SQLite call does."""
        if self._closed:
            raise self.error_type(f"{what}: {self.path} is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._busy_timeout_ms / 1000
        while (left := deadline - loop.time()) > 0:
            if self._lock.acquire(blocking=False):
                try:
                    done, result = self._run_without_waiting(call, what)
                finally:
                    self._lock.release()
                if done:
                    return result  # type: ignore[return-value]
                wait = self._wait_until_free  # another process holds the write lock
            else:
                wait = self._wait_for_lock  # a call of another thread of ours
            await loop.run_in_executor(self._executor, wait, left)
        return await loop.run_in_executor(self._executor, self._run_or_fail, call, what)

    def _wait_for_lock(self, timeout_s: float) -> None:
        """Return once the call of another thread of ours is done, or after ``timeout_s``."""
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()

    def _wait_until_free(self, timeout_s: float) -> None:
        """Return once no other connection held the write lock a moment ago, or after
        ``timeout_s``; on the worker thread.

        A connection of its own tries the lock every LOCK_POLL_S (not SQLite's busy handler,
        whose sleeps grow to 100 ms), taking it and giving it back at once; the call itself
        then runs on the loop's thread. Meanwhile
        the loop's other calls go on (reads need no write lock). A call run here held the
        write lock several times longer: sqlite3 hands the GIL over at every row, and the
        loop's thread, busy with the next batch, kept it for up to a switch interval each time
        (a store write of 4,000 documents held the lock 0.03-0.25 s on this thread against
        ~0.03 s on the loop's, and the other processing process waited for it; measured)."""
        if self.read_only:
            # Its probe would take the write lock (and make the -wal a reader must not).
            time.sleep(LOCK_POLL_S)
            return
        with self._probe_lock:
            if self._closed:
                return
            deadline = time.monotonic() + timeout_s
            try:
                if self._probe is None:
                    self._probe = connect(self.path, busy_timeout_s=self._busy_timeout_ms / 1000)
                with self._busy_timeout(0, self._probe):
                    while True:
                        try:
                            self._probe.execute("BEGIN IMMEDIATE")
                        except sqlite3.OperationalError as exc:
                            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                            if not busy or time.monotonic() >= deadline:
                                return
                            time.sleep(LOCK_POLL_S)
                            continue
                        self._probe.execute("ROLLBACK")
                        return
            except sqlite3.Error:
                pass  # the call, tried again, meets what is wrong and reports it

    def _run_or_fail(self, call: Callable[[sqlite3.Connection], T], what: str) -> T:
        """``call(connection)`` once more, a busy file failing it at once (the busy timeout has
        passed); on the worker thread. Called by ``run`` only."""
        with self._lock:
            if self._closed:  # before the busy timeout is set on the closed connection
                raise self.error_type(f"{what}: {self.path} is closed")
            try:
                with self._busy_timeout(0):
                    return self._call(call, what)
            finally:
                self._queue_checkpoint_if_due()

    def _run_without_waiting(
        self, call: Callable[[sqlite3.Connection], T], what: str
    ) -> tuple[bool, T | None]:
        """(True, result), or (False, None) when the file was busy before the call changed
        anything, so running it again is safe. Called holding the lock."""
        if self._closed:
            raise self.error_type(f"{what}: {self.path} is closed")
        connection = self._connection
        changes = connection.total_changes
        try:
            # Busy timeout 0: a locked file answers SQLITE_BUSY at once instead of sleeping here.
            with self._busy_timeout(0):
                return True, call(connection)
        except sqlite3.OperationalError as exc:
            untouched = connection.total_changes == changes and not connection.in_transaction
            if untouched and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY:
                return False, None
            raise self._error(exc, what) from exc
        except sqlite3.Error as exc:
            raise self._error(exc, what) from exc
        finally:
            self._queue_checkpoint_if_due()

    @contextmanager
    def _busy_timeout(
        self, milliseconds: int, connection: sqlite3.Connection | None = None
    ) -> Iterator[None]:
        """A connection's (this file's, by default) busy timeout set to ``milliseconds`` for a
        call, then set back."""
        connection = connection or self._connection
        connection.execute(f"PRAGMA busy_timeout={milliseconds}")
        try:
            yield
        finally:
            connection.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")

    def _error(self, exc: sqlite3.Error, what: str) -> EvalstreamError:
        return map_error(exc, what, self.error_type, self.transient_type)

    def _checkpoint_due(self) -> bool:
        return (
            self._connection.total_changes - self._changes_at_checkpoint >= CHECKPOINT_EVERY_CHANGES
        )

    def _checkpoint_if_due(self) -> None:
        """A WAL checkpoint, if due, on the caller's thread and connection (``run_blocking``);
        called holding the lock."""
        connection = self._connection
        if not self._checkpoint_due() or connection.in_transaction:
            return
        self._changes_at_checkpoint = connection.total_changes
        self._checkpoint(connection)

    def _queue_checkpoint_if_due(self) -> None:
        """A WAL checkpoint, if due, handed to ``_checkpoint_apart``; called holding the lock."""
        if self._checkpoint_queued or not self._checkpoint_due():
            return
        self._checkpoint_queued = True
        self._changes_at_checkpoint = self._connection.total_changes
        self._checkpointer.submit(self._checkpoint_apart)

    def _checkpoint_apart(self) -> None:
        """A checkpoint on the checkpoints' own thread and connection.

        A passive checkpoint holds no lock a writer needs, so the loop's calls go on while it
        copies and syncs (~40-110 ms per 10,000 documents of the store). Run on this file's
        connection it held the file's lock instead: a processing worker whose only partition
        had a write to make sat idle that long (the busier of two workers slept 0.2-0.7 s of
        2.5-3.1 s runs, measured; 0 s since)."""
        with self._checkpoint_lock:
            self._checkpoint_queued = False
            if self._closed:
                return
            try:
                if self._checkpoint_connection is None:
                    # The file's own synchronous setting: it decides the checkpoint's syncs.
                    self._checkpoint_connection = connect(
                        self.path,
                        synchronous=self._synchronous,
                        busy_timeout_s=self._busy_timeout_ms / 1000,
                    )
                    # Checkpoints read the WAL and write the file: no page cache to speak of.
                    self._checkpoint_connection.execute("PRAGMA cache_size=-64")
            except sqlite3.Error as exc:
                log.warning("checkpoint of %s failed: %s", self.path, exc)
                return
            self._checkpoint(self._checkpoint_connection)

    def _checkpoint(self, connection: sqlite3.Connection) -> None:
        """Copy the WAL into the file, and start it over once it has grown past its limit.

        A passive checkpoint copies the WAL into the file without holding anyone back. Alone
        it is not enough when several processes write the file (the store: every processing
        worker; the log: ingest and the workers): it never catches up with another process
        that keeps appending, so SQLite never starts the WAL over and it only grows (the
        store's reached 1.3 GB in 40 s with two workers at 3,000 events/s, 17.8 GB in five
        minutes). So once the WAL is past WAL_SIZE_LIMIT, a RESTART checkpoint follows: it
        holds new writers back while it copies what came since the passive one and waits for
        the current writer and readers of older snapshots, then the next write starts the WAL
        over. Passive passes before it copy what came during the first (``_catch_up``), so
        that it holds writers back for less (2-worker processing, 4 paired runs: 24,026
        against 23,092 events/s, medians); ``_restart`` never waits while it holds them.
        Restarting at every checkpoint instead kept the busiest of two processing workers
        asleep 7 % of the time (bench/workers, one run)."""
        try:
            frames = self._catch_up(connection)
            if frames * self._page_size > WAL_SIZE_LIMIT:
                self._restart(connection)
        except sqlite3.Error as exc:
            # The WAL keeps the data; the next checkpoint (or closing) copies it over.
            log.warning("checkpoint of %s failed: %s", self.path, exc)

    def _restart(self, connection: sqlite3.Connection) -> bool:
        """A RESTART checkpoint, tried again every RESTART_RETRY_S for up to
        CHECKPOINT_WAIT_MS while something is in its way; whether the WAL was started over.

        With a busy timeout SQLite waits inside the checkpoint, and once the checkpoint holds
        the write lock (to copy the last frames) it waits for readers of older snapshots with
        that lock held, its busy handler sleeping up to 50-100 ms a turn: every writer stands
        still meanwhile (2-worker processing logged restarts of 0.02-0.26 s that way; tries
        without a timeout took 0.02-0.08 s each, copying and syncing included). Without one, a
        try that meets a writer copies what it can as a passive pass, and one that meets a
        reader gives the write lock back at once; writers go on between tries. When time runs
        out the WAL keeps growing until the next checkpoint tries again."""
        deadline = time.monotonic() + CHECKPOINT_WAIT_MS / 1000
        with self._busy_timeout(0, connection):
            while connection.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(RESTART_RETRY_S)
        return True

    def _catch_up(self, connection: sqlite3.Connection) -> int:
        """Passive checkpoints, the WAL's frames after the last. Once the WAL is past its limit,
        the passes go on until one finds little left to copy (what came meanwhile), so that
        the RESTART that follows holds writers back for little more than its wait."""
        _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        for _ in range(CATCH_UP_PASSES):
            if frames * self._page_size <= WAL_SIZE_LIMIT:
                break
            before = copied
            _, frames, copied = connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if copied - before <= CATCH_UP_FRAMES:
                break
        return int(frames)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._connection.close()
        with self._probe_lock:  # after the wait in progress, if any
            if self._probe is not None:
                self._probe.close()
        with self._checkpoint_lock:  # after the checkpoint in progress, if any
            if self._checkpoint_connection is not None:
                self._checkpoint_connection.close()
        self._executor.shutdown(wait=False)
        self._checkpointer.shutdown(wait=False)

    async def aclose(self) -> None:
        """Close after the call in flight, without blocking the event loop."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(None, self.close))
