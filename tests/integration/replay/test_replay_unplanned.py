"""A replay job whose planning stopped before its plan was written (a full disk, a kill) is
planned afresh under the same --id: --resume cannot continue it, and the id was refused as
taken, so an operator who names jobs had no way forward."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from stream.producers.simulator import Simulator
from stream.replay.job import JobFile
from stream.sources.local_log import LocalLog
from tests.integration.replay.harness import evalstream

pytestmark = pytest.mark.integration

START = datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_a_job_never_planned_is_planned_again_under_its_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    log = LocalLog(data / "log.db", 8)
    try:
        log.append([(e.app_id, e.body) for e in Simulator(apps=2, seed=3, start=START).events(300)])
    finally:
        log.close()
    # What a stopped planning leaves: the job's file, its tables, no plan.
    (data / "replays").mkdir()
    JobFile(data / "replays" / "night.db").close()
    window = ["--from", "2026-03-01T10:00Z", "--to", "2026-03-01T11:00Z"]

    resumed = evalstream("replay", "--resume", "night", "--data-dir", str(data))
    assert resumed.returncode == 2, resumed.stderr
    assert "never planned (its planning stopped); start it again" in resumed.stderr

    again = evalstream(
        "replay", "--source", "log", *window, "--id", "night", "--data-dir", str(data)
    )
    assert again.returncode == 0, again.stderr
    assert "replay night: 300 events in" in again.stdout + again.stderr
    twice = evalstream(
        "replay", "--source", "log", *window, "--id", "night", "--data-dir", str(data)
    )
    assert twice.returncode == 2
    assert "a replay job 'night' exists already; --resume it" in twice.stderr
