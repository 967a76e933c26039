"""The one way evalstream uses SQLite: how a file is opened and tuned, how blocking calls leave
the event loop, how ``sqlite3`` errors become the caller's own errors.

Every SQLite adapter (store, alert topic, local event log, cold-path progress) holds a
``SqliteFile`` and does its work in plain functions of a ``sqlite3.Connection`` passed to
``run`` (from async code: on the file's own worker thread, one call at a time) or
``run_blocking`` (from sync code). Errors come out as the adapter's error type.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar

from common.errors import EvalstreamError

T = TypeVar("T")

BUSY_TIMEOUT_S = 30.0
CACHE_KIB = 32 * 1024
# Pages of new files. Rows here are ~1-2 KB JSON documents or event bodies: with SQLite's
# 4 KiB default only two fit a page, and an upsert batch costs ~25% more CPU (splits, WAL
# frames, checkpoint copies) than with 16 KiB pages (measured, bench/results/processor.md).
DEFAULT_PAGE_SIZE = 16 * 1024

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

# Messages of OperationalError that describe a passing condition: another process holds the
# write lock, or the disk is full or failing for now. Anything else (constraint, corrupt file,
# bad SQL) will fail the same way again.
_TRANSIENT = ("locked", "busy", "disk is full", "disk i/o error", "unable to open")


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
    return connection


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


def map_error(exc: sqlite3.Error, what: str, error_type: type[EvalstreamError]) -> EvalstreamError:
    """The adapter's error for a ``sqlite3`` error; the caller raises it ``from exc``."""
    text = str(exc)
    transient = isinstance(exc, sqlite3.OperationalError) and any(
        marker in text.lower() for marker in _TRANSIENT
    )
    return error_type(f"{what}: SQLite: {text}", retryable=transient)


class SqliteFile:
    """One SQLite file, opened with ``connect`` and the adapter's ``schema``.

    ``run`` moves a blocking call onto this file's single worker thread (so calls on one
    connection never overlap and the event loop never waits on a lock or an fsync);
    ``run_blocking`` does the same work on the calling thread for sync callers. Both map
    ``sqlite3`` errors to ``error_type``. Closing twice is harmless; use after close raises.
    """

    def __init__(
        self,
        path: Path,
        *,
        error_type: type[EvalstreamError],
        schema: str = "",
        page_size: int = DEFAULT_PAGE_SIZE,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = BUSY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.error_type = error_type
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.name}")
        self._closed = False
        try:
            self._connection = connect(
                path, page_size=page_size, synchronous=synchronous, busy_timeout_s=busy_timeout_s
            )
            if schema:
                self._connection.executescript(schema)
        except sqlite3.Error as exc:
            self._executor.shutdown(wait=False)
            raise map_error(exc, f"opening {path}", error_type) from exc

    @property
    def closed(self) -> bool:
        return self._closed

    def run_blocking(self, call: Callable[[sqlite3.Connection], T], what: str = "query") -> T:
        """Run ``call(connection)`` on this thread; ``sqlite3`` errors become ``error_type``."""
        with self._lock:
            if self._closed:
                raise self.error_type(f"{what}: {self.path} is closed")
            try:
                return call(self._connection)
            except sqlite3.Error as exc:
                raise map_error(exc, what, self.error_type) from exc

    async def run(self, call: Callable[[sqlite3.Connection], T], what: str = "query") -> T:
        """``run_blocking`` on the worker thread, awaited without blocking the event loop."""
        if self._closed:
            raise self.error_type(f"{what}: {self.path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_blocking, call, what)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._connection.close()
        self._executor.shutdown(wait=False)

    async def aclose(self) -> None:
        """Close after the call in flight, without blocking the event loop."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        await asyncio.shield(loop.run_in_executor(None, self.close))
