"""Mistakes an operator makes on the command line end in one line naming them (exit 2), and a
command that only reads creates nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.sqlite import sqlite3
from evalstream.cli import app
from store.sqlite import SqliteStore
from stream.exceptions import SourceError

READERS = {
    "report": ["report", "-o", "{out}/report.html"],
    "status": ["status"],
    "quarantine": ["quarantine"],
    "evaluations": ["evaluations"],
    "coldpath status": ["coldpath", "status"],
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


def _log_with_events(data_dir: Path) -> None:
    """A data dir whose log holds 20 events of 2026-12-07 and whose store exists."""
    events = data_dir.parent / "events.ndjson"
    code, output = invoke(
        ["simulate", "--count", "20", "--start", "2026-12-07T00:00Z", "-o", str(events)]
    )
    assert code == 0, output
    code, output = invoke(["send", str(events), "--data-dir", str(data_dir)])
    assert code == 0, output

    async def create() -> None:
        async with SqliteStore(data_dir / "store.db"):
            pass

    asyncio.run(create())


def files(folder: Path) -> list[Path]:
    # Loading the settings reads the log's partition count: SQLite's -wal and -shm may appear.
    return sorted(p for p in folder.rglob("*") if not p.name.endswith(("-wal", "-shm")))


WRITERS = {
    "replay --report": ["replay", "--from", "2026-12-07", "--to", "2026-12-08", "--report"],
    "report -o": ["report", "-o"],
    "simulate -o": ["simulate", "--count", "3", "-o"],
}
BAD_OUTPUTS = {
    "missing folder": ("{tmp}/missing/out.json", "{tmp}/missing does not exist"),
    "folder is a file": ("{tmp}/events.ndjson/out.json", "{tmp}/events.ndjson is a file"),
    "in /proc": ("/proc/out.json", "No such file or directory"),
    "a directory's name": ("{tmp}/", "Is a directory"),
}


@pytest.mark.parametrize("bad", BAD_OUTPUTS.values(), ids=BAD_OUTPUTS.keys())
@pytest.mark.parametrize("args", WRITERS.values(), ids=WRITERS.keys())
def test_an_output_path_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, args: list[str], bad: tuple[str, str]
) -> None:
    # Replay ran the whole job before failing on its report (exit 1, a traceback); report made
    # missing folders (or failed with a traceback); each command now refuses the same way.
    data_dir = tmp_path / "data"
    _log_with_events(data_dir)
    before = files(tmp_path)
    path, said = (text.format(tmp=tmp_path) for text in bad)
    code, output = invoke([*args, path, "--data-dir", str(data_dir)])
    assert code == 2, output
    assert output.strip().splitlines() == [output.strip()], output
    assert f"cannot write {path.rstrip('/')}: " in output and said in output, output
    assert files(tmp_path) == before


@pytest.mark.parametrize("start", ["2026-12-07T00:00", "2026-12-07", "2026-12-07T01:00+01:00"])
def test_simulate_reads_a_time_without_a_zone_as_utc(start: str) -> None:
    answer = CliRunner().invoke(app, ["simulate", "--count", "1", "--start", start, "-o", "-"])
    assert answer.exit_code == 0, answer.output
    first = json.loads(answer.stdout.splitlines()[0])
    assert datetime.fromisoformat(first["timestamp"]) == datetime(2026, 12, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["replay", "--from", "2026-12-07", "--to", "2026-12-08", "--app", "bad app"],
            "--app: 'bad app' is not an app id",
        ),
        (["evaluations", "--app", "<bad>"], "--app: '<bad>' is not an app id"),
        (["evaluations", "--policy", "nope"], "no policy named 'nope'"),
        (
            ["coldpath", "backfill", "--from", "2027-12-06", "--to", "2027-12-07"],
            "no window between --from 2027-12-06T00:00:00+00:00 and --to",
        ),
        (
            ["coldpath", "backfill", "--from", "{now:%Y-%m-%dT%H:00}", "--to", "9999-01-01"],
            "is due yet",
        ),
        (["coldpath", "run-shard", "--group-index", "0"], "give --manifest or --manifest-url"),
        (
            ["coldpath", "run-shard", "--group-index", "0", "--manifest", "nosuch"],
            "--manifest: no manifest 'nosuch' staged",
        ),
        (["coldpath", "status", "--metrics"], "--metrics: only with JOB"),
        (
            ["coldpath", "status", "--textfile", "{tmp}/m.prom", "--push-gateway", "http://x"],
            "--textfile, --push-gateway: only with JOB",
        ),
        (["coldpath", "status", "m1", "-p", "quality"], "--policy: not with JOB"),
        (["coldpath", "status", "m1"], "JOB 'm1': a Batch job's figures need an Azure Batch"),
        (["ingest-key", ""], "NAME: the key's holder needs a name"),
        (["ingest-key", "  "], "NAME: the key's holder needs a name"),
    ],
)
def test_an_operator_error_is_one_line_and_exit_2_before_any_work(
    tmp_path: Path, args: list[str], said: str
) -> None:
    data_dir = tmp_path / "data"
    _log_with_events(data_dir)
    before = files(tmp_path)
    now = datetime.now(UTC)
    args = [arg.format(tmp=tmp_path, now=now) for arg in args]
    where = [] if args[0] == "ingest-key" else ["--data-dir", str(data_dir)]
    code, output = invoke([*args, *where])
    assert code == 2, output
    assert said in output, output
    assert output.strip().splitlines() == [output.strip()], output
    assert "--executor" not in output
    assert files(tmp_path) == before


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"id": 3}', "id: Input should be a valid string (and 5 more)"),
        ("garbage", "Invalid JSON: expected value at line 1 column 1"),
    ],
)
def test_an_invalid_manifest_file_is_one_line_naming_its_first_problem(
    tmp_path: Path, text: str, said: str
) -> None:
    (tmp_path / "store.db").touch()
    manifest = tmp_path / "m.json"
    manifest.write_text(text)
    code, output = invoke(
        ["coldpath", "run-shard", "--group-index", "0", "--manifest", str(manifest),
         "--data-dir", str(tmp_path)]
    )  # fmt: skip
    assert code == 2, output
    assert output.strip().splitlines() == [
        f"error: --manifest: {manifest} is not a valid manifest: {said}"
    ], output


def test_read_only_commands_create_nothing_in_a_mistyped_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "typo"
    code, output = invoke(["coldpath", "status", "--data-dir", str(data_dir)])
    assert code == 2, output
    assert f"no store at {data_dir / 'store.db'}" in output
    code, output = invoke(["alerts", "dlq", "-s", "all", "--data-dir", str(data_dir)])
    assert code == 2, output
    assert f"no alert bus at {data_dir / 'alerts.db'}" in output
    assert not data_dir.exists()


def test_a_replay_refused_once_planned_leaves_no_lock(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    _log_with_events(data_dir)
    # A process of its own: the replay installs signal handlers on its real stderr.
    done = subprocess.run(
        [sys.executable, "-m", "evalstream", "replay", "--from", "2027-01-01", "--to",
         "2027-01-02", "--id", "j", "--data-dir", str(data_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "nothing to replay" in done.stderr
    assert list((data_dir / "replays").iterdir()) == []


def test_a_data_dir_that_is_a_file_is_one_line_before_the_banner(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "evalstream", "process", "--data-dir", str(tmp_path / "file")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: embedded.data_dir: {tmp_path / 'file'} is not a directory; choose another "
        "directory (--data-dir, embedded.data_dir)"
    ]


class FullAfterOneBatch:
    """A sink that commits its first batch and fails on the next, as a full disk does."""

    def __init__(self) -> None:
        self.appended: list[bytes] = []

    async def __aenter__(self) -> FullAfterOneBatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def append(self, items: list[tuple[str | None, bytes]]) -> None:
        if self.appended:
            raise SourceError("append to the event log: database or disk is full")
        self.appended.extend(line for _, line in items)


def test_a_send_that_fails_midway_says_what_was_appended_and_where_to_resend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = FullAfterOneBatch()
    monkeypatch.setattr("evalstream.wiring.sink", lambda settings: sink)
    lines = [b'{"n": %d}' % n for n in range(5)]
    # A blank line is not an event: the count is of events, the place a byte offset.
    path = tmp_path / "events.ndjson"
    path.write_bytes(lines[0] + b"\n\n" + b"\n".join(lines[1:]) + b"\n")
    code, output = invoke(["send", str(path), "--batch", "2", "--data-dir", str(tmp_path)])
    assert code == 1, output
    assert sink.appended == lines[:2]
    offset = path.read_bytes().index(lines[2])
    assert output.strip().splitlines() == [
        "error: append to the event log: database or disk is full; 2 events (the first 2 "
        f"non-blank lines of {path}) were appended before it: resend from the next line, at "
        f"byte {offset} (tail -c +{offset + 1}), not to send them twice"
    ], output
    # What the message says to resend is exactly what was not appended.
    assert path.read_bytes()[offset:].splitlines() == lines[2:]


@pytest.mark.parametrize("args", READERS.values(), ids=READERS.keys())
def test_a_reader_creates_no_file_beside_an_existing_store(tmp_path: Path, args: list[str]) -> None:
    # status opened the event log to show its partitions, creating log.db beside the store.
    data_dir = tmp_path / "data"

    async def create() -> None:
        async with SqliteStore(data_dir / "store.db"):
            pass

    asyncio.run(create())
    before = files(data_dir)
    code, output = invoke(
        [arg.format(out=tmp_path) for arg in args] + ["--data-dir", str(data_dir)]
    )
    assert code == 0, output
    assert files(data_dir) == before


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status", "--bogus"], "No such option: --bogus (see '{prog} status --help')"),
        (["report"], "Missing option '--output' / '-o'. (see '{prog} report --help')"),
        (["send"], "Missing argument 'path'. (see '{prog} send --help')"),
        (["nosuch"], "No such command 'nosuch'. (see '{prog} --help')"),
        (
            ["process", "--workers", "0"],
            "Invalid value for '--workers': Input should be greater than or equal to 1"
            " (see '{prog} process --help')",
        ),
        (["alerts", "listen", "--bogus"], "No such option: --bogus (see '{prog} alerts listen"),
    ],
)
def test_a_usage_error_of_the_parser_is_one_error_line_and_exit_2(
    args: list[str], said: str
) -> None:
    """As every other operator error: not typer's box of usage, hint and framed message."""
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: " + said.format(prog="python -m evalstream")), line


def test_help_is_left_as_it_was() -> None:
    result = CliRunner().invoke(app, ["status", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "Usage: root status [OPTIONS]" in result.output
    assert "╭─ Options ─" in result.output
