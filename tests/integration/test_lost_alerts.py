"""Breaches lost by the embedded alert bus — its WAL cut after the processor was killed, or an
older copy of its file put back — are found at the processor's next start, said in the log,
and published again from the store's journal with their ids: subscribers then receive exactly
the breaches of the uninterrupted run."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from common.sqlite import sqlite3
from tests.integration.conftest import SimulatedRun
from tests.integration.processor_harness import (
    KILL_ENV,
    checkpoints,
    drain_breaches,
    kill_at_points,
    kill_hard,
    start_processor,
    wait_until,
)
from tests.integration.test_lost_writes import cut_wal, keep_files, put_back

pytestmark = pytest.mark.integration

LOST = "the alert bus lost"
GIVEN_AGAIN = "published them again from the store's journal, with their ids"


def finish(data_dir: Path) -> str:
    """Process what is left until idle; what the processor printed (warnings and errors)."""
    process = start_processor(data_dir, KILL_ENV, "--until-idle", "1")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()
    return output.decode()


def messages(bus: Path) -> int:
    """Messages waiting in a copy of a bus file (its WAL read, the original left as it is)."""
    copy = bus.parent / "count"
    copy.mkdir()
    for path in bus.parent.glob(f"{bus.name}*"):
        shutil.copy2(path, copy / path.name)
    connection = sqlite3.connect(copy / bus.name)
    try:
        return int(connection.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        connection.close()
        shutil.rmtree(copy)


def test_a_cut_bus_wal_gets_its_breaches_again(tmp_path: Path, simulated_run: SimulatedRun) -> None:
    data = tmp_path / "data"
    shutil.copytree(simulated_run.log_dir, data)
    running = start_processor(data, KILL_ENV)
    try:
        # Every event processed and its snapshot saved (each checkpoint follows one).
        wait_until(
            lambda: checkpoints(data) == simulated_run.expected.last_sequence, 180, "checkpoints"
        )
    finally:
        kill_hard(running)  # the bus's commits stay in its WAL

    cut_wal(data / "alerts.db")
    said = finish(data)

    assert sorted(asyncio.run(drain_breaches(data))) == sorted(simulated_run.breaches)
    assert LOST in said and GIVEN_AGAIN in said
    assert LOST not in finish(data)  # found once, given again: the next start is quiet


def test_an_older_bus_file_put_back_gets_the_breaches_it_lacks_again(
    tmp_path: Path, simulated_run: SimulatedRun
) -> None:
    data = tmp_path / "data"
    shutil.copytree(simulated_run.log_dir, data)
    total = len(simulated_run.expected.telemetry) + len(simulated_run.expected.quarantine)
    kill_at_points(data, KILL_ENV, [total // 2])
    keep_files(data, "alerts.db", tmp_path / "bus-then")
    finish(data)
    put_back(tmp_path / "bus-then", data, "alerts.db")
    assert messages(data / "alerts.db") < len(simulated_run.breaches)

    said = finish(data)

    assert sorted(asyncio.run(drain_breaches(data))) == sorted(simulated_run.breaches)
    assert LOST in said and GIVEN_AGAIN in said
