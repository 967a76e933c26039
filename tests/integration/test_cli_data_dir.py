"""A data dir that cannot take writes — read-only, or full — is one line naming the directory
and the cause, exit 2, no traceback, for the commands that write there."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COMMANDS = [
    ["process", "--no-ingest", "--until-idle", "1"],
    ["send", "-"],
    ["simulate", "--count", "10", "--no-pace"],
    ["coldpath", "trigger"],
    ["coldpath", "backfill", "--from", "2026-12-01", "--to", "2026-12-01T02:00Z"],
]
# alerts dlq only reads: a data dir without its alert bus is refused before any of these
# checks (tests/unit/alerts/test_cli_alerts.py).


def run(
    args: list[str], data_dir: Path, prefix: list[str], limit: Callable[[], None] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
        env={**env, "COLUMNS": "300"},
        input="",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        preexec_fn=limit,
    )


def one_error_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], result.stderr


@pytest.fixture
def read_only_dir() -> Iterator[tuple[Path, list[str]]]:
    """A directory without write permission, and the command prefix that makes it one: root
    writes anywhere, so as root the command runs as the unprivileged user ``nobody``."""
    # Not under pytest's tmp dir: its parents are closed to other users.
    path = Path(tempfile.mkdtemp(prefix="evalstream-ro-"))
    path.chmod(0o555)
    prefix = []
    if os.geteuid() == 0:
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        yield path, prefix
    finally:
        path.chmod(0o755)
        shutil.rmtree(path)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_a_read_only_data_dir_is_one_line_and_exit_2(
    read_only_dir: tuple[Path, list[str]], args: list[str]
) -> None:
    data_dir, prefix = read_only_dir
    result = run(args, data_dir, prefix)
    one_error_line(result, f"embedded.data_dir: {data_dir} is not writable")
    assert list(data_dir.iterdir()) == []


def _no_room_for_files() -> None:
    # Writes beyond 64 KiB fail (EFBIG) as they would on a full disk; SIGXFSZ ignored so the
    # write returns the error instead of killing the process.
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_a_data_dir_without_room_is_one_line_and_exit_2(tmp_path: Path, args: list[str]) -> None:
    result = run(args, tmp_path, [], _no_room_for_files)
    one_error_line(result, f"embedded.data_dir: {tmp_path} is full")
    assert [path.name for path in tmp_path.iterdir()] == []


@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: args[0])
def test_a_file_given_as_the_data_dir_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str]
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a directory")
    result = run(args, path, [])
    one_error_line(result, f"embedded.data_dir: {path} is not a directory")
    assert path.read_text() == "not a directory"


def test_a_read_only_database_file_is_named(read_only_dir: tuple[Path, list[str]]) -> None:
    data_dir, prefix = read_only_dir
    data_dir.chmod(0o777)  # the directory takes writes, one of its files does not
    created = run(["send", "-"], data_dir, [])
    assert created.returncode == 0, created.stderr
    (data_dir / "log.db").chmod(0o444)
    result = run(["send", "-"], data_dir, prefix)
    one_error_line(result, f"embedded.data_dir: {data_dir / 'log.db'} is read-only")


@pytest.mark.parametrize("name", ["log.db", "store.db", "alerts.db"])
@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["evaluations"],
        ["send", "-"],
        ["process", "--no-ingest", "--until-idle", "1", "--workers", "1"],
    ],
    ids=" ".join,
)
def test_a_data_file_that_is_not_a_database_is_one_line_and_exit_2(
    tmp_path: Path, name: str, args: list[str]
) -> None:
    """Every unusable data file the same way, whichever file and command: a corrupt store
    exited 1 and a corrupt log 2 (process), or 1 (status)."""
    data_dir = tmp_path / "data"
    # Every file made, so whichever command opens it meets the broken one.
    made = run(["process", "--no-ingest", "--until-idle", "0.2", "--workers", "1"], data_dir, [])
    assert made.returncode == 0, made.stderr
    assert {"log.db", "store.db", "alerts.db"} <= {path.name for path in data_dir.iterdir()}
    (data_dir / name).write_bytes(b"not a database, " * 512)
    for suffix in ("-wal", "-shm"):
        (data_dir / f"{name}{suffix}").unlink(missing_ok=True)
    result = run(args, data_dir, [])
    if result.returncode == 0:
        # Commands that never open that file (evaluations: the store only; status and send:
        # no alert bus).
        assert (args[0], name) in {
            ("evaluations", "log.db"),
            ("evaluations", "alerts.db"),
            ("status", "alerts.db"),
            ("send", "alerts.db"),
        }, result.stderr
        return
    one_error_line(result, f"{name}: SQLite: file is not a database")


@pytest.fixture(scope="module")
def processed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data dir the processor has worked in and left (no cold path run: the store has no
    evaluation tables yet), at rest: no -wal or -shm beside its files."""
    data_dir = tmp_path_factory.mktemp("processed") / "data"
    when = "2026-12-01T10:00:00+00:00"
    events = "\n".join(
        f'{{"app_id": "a{i % 2}", "timestamp": "{when}", "trace_id": "t{i}"}}' for i in range(5)
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    for args, given in (
        (["send", "-"], events + "\n{oops\n"),
        (["process", "--no-ingest", "--until-idle", "0.3", "--workers", "1"], ""),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
            env=env,
            input=given,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    return data_dir


def listing(path: Path) -> list[tuple[str, int, int]]:
    """Every entry's name, size and modification time, and the folder's own."""
    entries = [
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in path.iterdir()
    ]
    return [(".", 0, path.stat().st_mtime_ns), *sorted(entries)]


READ_ONLY = [
    ["status"],
    ["quarantine"],
    ["evaluations"],
    ["report", "-o", "{out}/report.html"],
    ["coldpath", "status"],
    ["alerts", "dlq", "-s", "all"],
]


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
def test_a_command_that_only_reads_leaves_the_data_dir_as_it_was(
    processed_dir: Path, tmp_path: Path, args: list[str]
) -> None:
    """Not a -wal or -shm made (and left: a read-only connection cannot remove them), not a
    table or index added, not a write check: names, sizes and times all unchanged."""
    before = listing(processed_dir)
    assert not [name for name, _, _ in before if name.endswith(("-wal", "-shm"))], before
    result = run([arg.format(out=tmp_path) for arg in args], processed_dir, [])
    assert result.returncode == 0, result.stderr
    assert listing(processed_dir) == before
