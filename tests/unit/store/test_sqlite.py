"""The embedded store's failures come out as store errors, never as ``sqlite3`` errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.sqlite import sqlite3
from store.exceptions import StoreError, StoreUnavailable
from store.ports import StateSnapshot
from store.sqlite import SqliteStore
from tests.unit.store.event_id_conflicts import check_event_id_conflicts


def test_a_file_that_cannot_be_opened_is_a_retryable_store_error(tmp_path: Path) -> None:
    # A folder where the file should be: SQLite cannot open it (for now).
    with pytest.raises(StoreUnavailable) as caught:
        SqliteStore(tmp_path)
    assert caught.value.retryable is True
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_a_broken_table_is_a_store_error_that_is_not_retried(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    async with SqliteStore(path) as store:
        other = sqlite3.connect(path)
        other.execute("DROP TABLE quarantine")
        other.close()
        with pytest.raises(StoreError) as caught:
            await store.count("quarantine")
        assert caught.value.retryable is False
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


async def test_use_after_close_raises(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    async with store:
        assert await store.count("telemetry") == 0
    with pytest.raises(StoreError, match="closed"):
        await store.count("telemetry")
    with pytest.raises(StoreError, match="closed"):
        async with store:
            pass


async def test_an_event_id_held_by_another_event_is_refused_and_a_reread_replaces(
    tmp_path: Path,
) -> None:
    async with SqliteStore(tmp_path / "store.db") as store:
        await check_event_id_conflicts(store)


async def test_a_snapshot_never_replaces_one_covering_a_later_position(tmp_path: Path) -> None:
    # The late batch of an owner that lost the partition saves after the new owner did.
    newer = StateSnapshot("$Default", "1", 120, b"new owner")
    async with SqliteStore(tmp_path / "store.db") as store:
        await store.save_state(newer)
        await store.save_state(StateSnapshot("$Default", "1", 80, b"old owner"))
        assert await store.load_state("$Default", "1") == newer
        again = StateSnapshot("$Default", "1", 120, b"same position again")
        await store.save_state(again)
        assert await store.load_state("$Default", "1") == again


# The telemetry table and key of files made before the key was led by the time.
_LEGACY_TELEMETRY = """
CREATE TABLE telemetry (
    id TEXT NOT NULL, pk TEXT NOT NULL, app_id TEXT NOT NULL, ts REAL NOT NULL, doc BLOB NOT NULL
);
CREATE UNIQUE INDEX telemetry_key ON telemetry (pk, id);
CREATE INDEX telemetry_app_ts ON telemetry (app_id, ts);
"""


def _indexes(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[1] for row in connection.execute("PRAGMA index_list(telemetry)")}
    finally:
        connection.close()


async def test_a_new_file_keys_telemetry_by_time_and_producer_ids_by_id(tmp_path: Path) -> None:
    async with SqliteStore(tmp_path / "store.db") as store:
        await check_event_id_conflicts(store)
    assert _indexes(tmp_path / "store.db") == {
        "telemetry_time_key",
        "telemetry_named_key",
        "telemetry_app_ts",
    }
    connection = sqlite3.connect(tmp_path / "store.db")
    try:
        rows = connection.execute("SELECT named, doc ->> '$.event_id' FROM telemetry").fetchall()
    finally:
        connection.close()
    # Named rows are those of a producer's event_id, the others have a content id.
    assert {bool(named) for named, _ in rows} == {True, False}
    assert all(bool(named) == (event_id is not None) for named, event_id in rows)


async def test_a_file_made_before_the_time_led_key_keeps_its_key_and_its_rules(
    tmp_path: Path,
) -> None:
    path = tmp_path / "store.db"
    connection = sqlite3.connect(path)
    connection.executescript(_LEGACY_TELEMETRY)
    connection.close()
    async with SqliteStore(path) as store:
        await check_event_id_conflicts(store)
    assert _indexes(path) == {"telemetry_key", "telemetry_app_ts"}
