"""``evalstream upgrade-store``: an embedded store made by an earlier version gets the time-led
telemetry key with its documents; refused while a processor runs on the data dir."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.lock_file import try_lock
from store.sqlite import SqliteStore
from tests.unit.store.event_id_conflicts import document
from tests.unit.store.layouts import (
    EARLIER_INDEXES,
    TIME_LED_INDEXES,
    earlier_file,
    telemetry_indexes,
)

pytestmark = pytest.mark.integration


def upgrade(data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "evalstream", "upgrade-store", "--data-dir", str(data_dir)],
        env={**env, "COLUMNS": "300"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def earlier_store(data_dir: Path) -> None:
    """A store as an earlier version made it, holding a document with a producer's event_id
    and one with a content id."""
    data_dir.mkdir()
    earlier_file(data_dir / "store.db")

    async def write() -> None:
        async with SqliteStore(data_dir / "store.db") as store:
            documents = [document(1, event_id="e-1"), document(2, latency_ms=5.0)]
            assert await store.write(documents, []) == []

    asyncio.run(write())


def test_an_earlier_store_is_upgraded_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    earlier_store(data_dir)
    result = upgrade(data_dir)
    assert result.returncode == 0, result.stderr
    assert "telemetry key upgraded, 2 documents (1 with a producer's event_id)" in result.stderr
    assert telemetry_indexes(data_dir / "store.db") == TIME_LED_INDEXES
    again = upgrade(data_dir)
    assert again.returncode == 0, again.stderr
    assert "has the time-led telemetry key already: nothing to do" in again.stderr


def test_a_running_processor_is_named_and_the_store_left_alone(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    earlier_store(data_dir)
    held = try_lock(data_dir / "processor.lock")
    assert held is not None
    try:
        result = upgrade(data_dir)
    finally:
        held.close()
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert f"another evalstream processor (pid {os.getpid()}) is running" in errors[0]
    assert errors[0].endswith("stop it, then upgrade the store")
    assert telemetry_indexes(data_dir / "store.db") == EARLIER_INDEXES


def test_a_data_dir_without_a_store_is_named(tmp_path: Path) -> None:
    result = upgrade(tmp_path)
    assert result.returncode == 2
    assert f"no store at {tmp_path / 'store.db'}" in result.stderr
    assert not (tmp_path / "store.db").exists()
