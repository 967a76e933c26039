"""SqliteFile.run: free calls on the loop thread, waits on the worker thread, checkpoints off
the loop."""

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


async def test_wal_checkpoints_run_on_the_worker_thread(
    file: SqliteFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(common.sqlite, "CHECKPOINT_EVERY_CHANGES", 5)
    checkpoints: list[int] = []
    file.run_blocking(
        lambda connection: connection.set_trace_callback(
            lambda statement: (
                checkpoints.append(threading.get_ident()) if "wal_checkpoint" in statement else None
            )
        )
    )
    # A call finding the worker busy with a checkpoint goes to the worker too: threads vary.
    for index in range(12):
        await file.run(insert(str(index)))
    # Calls made while one is queued do not queue another: one or more ran, none here.
    await until(lambda: len(checkpoints) >= 1)
    assert threading.get_ident() not in checkpoints
    assert await file.run(count) == 12


async def test_a_closed_file_refuses_calls(file: SqliteFile) -> None:
    await file.aclose()
    with pytest.raises(FileError, match="closed"):
        await file.run(count)


def test_two_writers_keep_the_wal_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers appending at once (processing workers sharing the store) while their
    checkpoints fall due: each checkpoint restarts the WAL, so it stays near what a few
    checkpoints' worth of writes take. A passive checkpoint never caught up with the other
    writer, and this WAL grew to several times the data written."""
    monkeypatch.setattr(common.sqlite, "CHECKPOINT_EVERY_CHANGES", 200)
    path = tmp_path / "shared.db"
    files = [SqliteFile(path, error_type=FileError, schema=SCHEMA) for _ in range(2)]
    row = "x" * 1500

    def write(connection: sqlite3.Connection) -> None:
        with transaction(connection):
            connection.executemany("INSERT INTO item (note) VALUES (?)", [(row,)] * 20)

    def writer(file: SqliteFile) -> None:
        for _ in range(400):
            file.run_blocking(write)

    threads = [threading.Thread(target=writer, args=(file,)) for file in files]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        written = 2 * 400 * 20 * len(row)  # 24 MB of rows
        wal = path.with_name(path.name + "-wal").stat().st_size
        assert wal < written / 4, f"WAL {wal:,} bytes after {written:,} bytes of rows"
        rows = files[0].run_blocking(lambda c: c.execute("SELECT count(*) FROM item").fetchone())
        assert rows == (16_000,)
    finally:
        for file in files:
            file.close()
