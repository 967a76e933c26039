"""SqliteFile.run: free calls on the loop thread, waits on the worker thread, checkpoints on a
connection and thread of their own."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import common.sqlite
from common.errors import EvalstreamError
from common.sqlite import SqliteFile, connect, transaction


class FileError(EvalstreamError):
    pass


class FileBusy(EvalstreamError):
    pass


SCHEMA = "CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, note TEXT)"


@pytest.fixture
def file(tmp_path: Path) -> Iterator[SqliteFile]:
    opened = SqliteFile(
        tmp_path / "f.db", error_type=FileError, transient_type=FileBusy, schema=SCHEMA
    )
    yield opened
    opened.close()


def insert(note: str) -> Callable[[sqlite3.Connection], int]:
    def call(connection: sqlite3.Connection) -> int:
        with transaction(connection):
            connection.execute("INSERT INTO item (note) VALUES (?)", (note,))
        return threading.get_ident()

    return call


def count(connection: sqlite3.Connection) -> int:
    return int(connection.execute("SELECT count(*) FROM item").fetchone()[0])


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_a_free_file_is_used_on_the_calling_thread(file: SqliteFile) -> None:
    assert await file.run(insert("a")) == threading.get_ident()
    assert await file.run(count) == 1


async def test_a_locked_file_waits_on_the_worker_thread_while_the_loop_runs(
    file: SqliteFile,
) -> None:
    other = connect(file.path)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    write = asyncio.create_task(file.run(insert("waited")))
    await until(lambda: ticks >= 5)
    assert not write.done()
    other.execute("COMMIT")
    other.close()
    thread = await write
    ticker.cancel()
    assert thread != threading.get_ident()
    assert await file.run(count) == 1


async def test_a_call_that_changed_rows_before_finding_the_file_busy_is_not_run_twice(
    file: SqliteFile,
) -> None:
    other = connect(file.path)

    def two_autocommit_writes(connection: sqlite3.Connection) -> None:
        connection.execute("INSERT INTO item (note) VALUES ('first')")
        other.execute("BEGIN IMMEDIATE")
        connection.execute("INSERT INTO item (note) VALUES ('second')")

    with pytest.raises(FileBusy) as raised:
        await file.run(two_autocommit_writes)
    assert raised.value.retryable
    other.execute("ROLLBACK")
    other.close()
    assert await file.run(count) == 1


async def test_other_errors_come_out_as_the_adapter_error(file: SqliteFile) -> None:
    with pytest.raises(FileError, match="bad query: SQLite: no such table"):
        await file.run(
            lambda connection: connection.execute("SELECT * FROM missing_table"), "bad query"
        )


async def test_calls_do_not_wait_for_a_wal_checkpoint_in_progress(
    file: SqliteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common.sqlite, "CHECKPOINT_EVERY_CHANGES", 5)
    started, release, done = threading.Event(), threading.Event(), threading.Event()
    threads: list[int] = []
    real_connect = common.sqlite.connect

    class HeldInTheMiddle:
        """The checkpointer's connection, its checkpoint held until released."""

        def __init__(self, inner: sqlite3.Connection) -> None:
            self.inner = inner

        def execute(self, sql: str) -> sqlite3.Cursor:
            if "wal_checkpoint" not in sql:
                return self.inner.execute(sql)
            threads.append(threading.get_ident())
            started.set()
            release.wait(10)
            cursor = self.inner.execute(sql)
            done.set()
            return cursor

        def close(self) -> None:
            self.inner.close()

    # The file's own connection is open already: only the checkpointer's is wrapped.
    monkeypatch.setattr(
        common.sqlite,
        "connect",
        lambda *args, **kwargs: HeldInTheMiddle(real_connect(*args, **kwargs)),
    )
    for index in range(6):
        await file.run(insert(str(index)))
    await until(started.is_set)
    # The checkpoint is held in the middle: writes and reads go on without it, on the loop.
    writers = {await file.run(insert(f"during-{index}")) for index in range(20)}
    assert writers == {threading.get_ident()}
    assert await file.run(count) == 26
    assert not done.is_set()
    wal = file.path.with_name(file.path.name + "-wal")
    size_before = file.path.stat().st_size
    release.set()
    await until(done.is_set)
    # It ran on a thread of its own and copied the WAL into the file.
    assert threading.get_ident() not in threads
    assert file.path.stat().st_size > size_before
    assert wal.exists()
    assert await file.run(count) == 26


async def test_a_closed_file_refuses_calls(file: SqliteFile) -> None:
    await file.aclose()
    with pytest.raises(FileError, match="closed"):
        await file.run(count)
