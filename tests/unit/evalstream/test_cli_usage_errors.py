"""Mistakes an operator makes on the command line end in one line naming them (exit 2), and a
command that only reads creates nothing."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.sqlite import sqlite3
from evalstream.cli import app
from store.sqlite import SqliteStore

READERS = {
    "report": ["report", "-o", "{out}/report.html"],
    "status": ["status"],
    "quarantine": ["quarantine"],
    "evaluations": ["evaluations"],
}


def invoke(args: list[str]) -> tuple[int, str]:
    answer = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    return answer.exit_code, answer.output


@pytest.mark.parametrize("args", READERS.values(), ids=READERS.keys())
def test_a_data_dir_without_a_store_is_refused_and_left_alone(
    tmp_path: Path, args: list[str]
) -> None:
    data_dir = tmp_path / "typo"
    code, output = invoke(
        [arg.format(out=tmp_path) for arg in args] + ["--data-dir", str(data_dir)]
    )
    assert code == 2, output
    assert f"no store at {data_dir / 'store.db'}" in output
    # Not created: an empty store would have answered "nothing there" to every later look.
    assert not data_dir.exists()
    assert [path.name for path in tmp_path.iterdir()] == []


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["coldpath", "backfill", "--from", "2026-03-02", "--to", "2026-03-01"], "must be before"),
        (
            ["coldpath", "windows", "-p", "quality", "--from", "2026-03-01", "--to", "2026-03-01"],
            "must be before",
        ),
        (
            ["coldpath", "trigger", "--window", "2026-03-01T11:00Z/2026-03-01T10:00Z"],
            "its end is not after its start",
        ),
        (["quarantine", "--limit", "0"], "greater than or equal to 1"),
        (["evaluations", "--limit", "-5"], "greater than or equal to 1"),
    ],
)
def test_an_empty_or_inverted_selection_is_refused(
    tmp_path: Path, args: list[str], said: str
) -> None:
    # A store that exists, so that only the selection is wrong.
    (tmp_path / "store.db").touch()
    code, output = invoke([*args, "--data-dir", str(tmp_path)])
    assert code == 2, output
    assert said in output, output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["send", "{tmp}/missing.ndjson"], "cannot read {tmp}/missing.ndjson: No such file"),
        (["send", "{tmp}"], "cannot read {tmp}: Is a directory"),
        (["send", "-", "--batch", "0"], "'--batch'"),
        (["simulate", "--apps", "0", "--count", "1"], "'--apps'"),
        (["simulate", "--rate", "0", "--count", "1"], "'--rate'"),
        (["simulate", "--count", "-1"], "'--count'"),
        (["simulate", "--invalid-fraction", "1.5", "--count", "1"], "'--invalid-fraction'"),
        (["simulate", "--output", "{tmp}/events.ndjson"], "writing to a file needs --count"),
        (["simulate", "--count", "1", "--output", "{tmp}"], "cannot write {tmp}: Is a directory"),
        (
            ["simulate", "--count", "1", "--output", "{tmp}/missing/events.ndjson"],
            "cannot write {tmp}/missing/events.ndjson: No such file",
        ),
        (["process", "--ingest-port", "65536"], "'--ingest-port'"),
        (["process", "--until-idle", "-1"], "'--until-idle'"),
        (["coldpath", "run-shard", "--manifest", "m", "--group-index", "-1"], "'--group-index'"),
        (["process", "--log-level", "LOUD"], "'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
        (
            ["process", "--simulate", "--incident", "latency_regression:app-009@0+10x3"],
            "names unknown app 'app-009'",
        ),
        (
            ["simulate", "--count", "1", "--incident", "score_drift:app-001/nosuch@0+10x-2"],
            "app app-001 has no score 'nosuch'",
        ),
        (["replay", "--log-level", "verbose"], "'verbose' is not one of DEBUG"),
        (["coldpath", "trigger", "--log-level", "warn"], "'warn' is not one of DEBUG"),
    ],
)
def test_an_option_out_of_its_range_is_named_not_a_traceback(
    tmp_path: Path, args: list[str], said: str
) -> None:
    code, output = invoke(
        [arg.format(tmp=tmp_path) for arg in args] + ["--data-dir", str(tmp_path)]
    )
    assert code == 2, output
    assert said.format(tmp=tmp_path) in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize("job", ["../store", "../../elsewhere/x", "/tmp/job", ".hidden"])
def test_resume_takes_a_job_id_not_a_path(tmp_path: Path, job: str) -> None:
    # The job file is <data_dir>/replays/<id>.db: "../store" named the store itself, which was
    # opened as a job (its tables created in the store) before being called never planned.
    store = tmp_path / "store.db"
    store.touch()
    (tmp_path / "replays").mkdir()
    code, output = invoke(["replay", "--resume", job, "--data-dir", str(tmp_path)])
    assert code == 2, output
    assert "--resume" in output and "not a job id" in output, output
    assert store.stat().st_size == 0
    assert not (tmp_path / "store.lock").exists()


@pytest.mark.parametrize(
    ("window", "said"),
    [
        # Half an hour of the hourly default policy: stored as its own result beside the hour's,
        # the same documents counted in both.
        ("2026-03-01T10:30Z/2026-03-01T11:00Z", "is not a window of policy 'quality'"),
        ("2026-03-01T10:00Z/2026-03-01T12:00Z", "is not a window of policy 'quality'"),
        # 04:30-05:30 UTC: windows are UTC-aligned whatever the offset a time is given in.
        ("2026-03-01T10:00+05:30/2026-03-01T11:00+05:30", "is not a window of policy 'quality'"),
        # An hour of the year 9000 and the hour now: events of them may still arrive.
        ("9000-03-01T10:00Z/9000-03-01T11:00Z", "of policy 'quality' is not due yet"),
        (
            "{hour:%Y-%m-%dT%H:00Z}/{next_hour:%Y-%m-%dT%H:00Z}",
            "of policy 'quality' is not due yet: its events may arrive until",
        ),
    ],
)
def test_trigger_takes_only_windows_of_the_policies(tmp_path: Path, window: str, said: str) -> None:
    (tmp_path / "store.db").touch()
    hour = datetime.now(UTC)
    window = window.format(hour=hour, next_hour=hour + timedelta(hours=1))
    code, output = invoke(["coldpath", "trigger", "--window", window, "--data-dir", str(tmp_path)])
    assert code == 2, output
    assert said in output, output
    assert len(output.strip().splitlines()) == 1, output
    assert (tmp_path / "store.db").stat().st_size == 0


@pytest.mark.parametrize(
    ("args", "target", "said"),
    [
        (["report", "--output"], "store.db", "is a SQLite database"),
        (["report", "-o"], "user-hash.key", "is a file of the data dir"),
        (["simulate", "--count", "3", "--output"], "log.db", "is a SQLite database"),
        (
            ["replay", "--source", "log", "--from", "2026-03-01", "--to", "2026-03-02", "--report"],
            "alerts.db",
            "is a SQLite database",
        ),
        # Elsewhere than the data dir too: another processor's store.
        (["report", "--output"], "../elsewhere/store.db", "is a SQLite database"),
    ],
)
def test_an_output_over_the_services_own_files_is_refused(
    tmp_path: Path, args: list[str], target: str, said: str
) -> None:
    data_dir = tmp_path / "data"
    (tmp_path / "elsewhere").mkdir()
    data_dir.mkdir()
    with sqlite3.connect(data_dir / "store.db") as connection:
        connection.execute("CREATE TABLE kept (x)")
    for name in ("log.db", "alerts.db"):
        (data_dir / name).write_bytes((data_dir / "store.db").read_bytes())
    (tmp_path / "elsewhere" / "store.db").write_bytes((data_dir / "store.db").read_bytes())
    (data_dir / "user-hash.key").write_text("secret")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    path = data_dir / target
    code, output = invoke([*args, str(path), "--data-dir", str(data_dir)])
    assert code == 2, output
    assert f"{path} {said}; writing there would destroy it" in output, output
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before


def test_a_report_may_replace_an_earlier_report_in_the_data_dir(tmp_path: Path) -> None:
    async def create() -> None:
        async with SqliteStore(tmp_path / "store.db"):
            pass

    asyncio.run(create())
    (tmp_path / "report.html").write_text("an earlier report")
    code, output = invoke(
        ["report", "-o", str(tmp_path / "report.html"), "--data-dir", str(tmp_path)]
    )
    assert code == 0, output
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")
