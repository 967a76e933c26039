"""The replay's progress display as a person sees it: run in a tmux pane of a real terminal,
captured while it reads and when it is done (kept in test-artifacts/replay/)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.replay.harness import ENV, live_run

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts" / "replay"


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def capture(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def wait_for_screen(session: str, condition: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = capture(session)
        if condition in screen:
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{condition!r} never appeared on the pane:\n{screen}")
        time.sleep(0.05)


def halves(path: Path) -> list[str]:
    """The file's lines in two files, the first half and the rest."""
    lines = path.read_bytes().splitlines(keepends=True)
    parts = [path.with_name("first.ndjson"), path.with_name("rest.ndjson")]
    parts[0].write_bytes(b"".join(lines[: len(lines) // 2]))
    parts[1].write_bytes(b"".join(lines[len(lines) // 2 :]))
    return [str(part) for part in parts]


def in_pane(command: list[str], tmp_path: Path) -> tuple[str, str]:
    """``command`` run in a 100×40 tmux pane: the screen once it shows a rate, and at the end."""
    env = " ".join(f"{key}={shlex.quote(value)}" for key, value in ENV.items())
    session = f"replay-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "done"
    # The pane's own size, not one inherited from the environment, decides the layout.
    script = (
        f"cd {shlex.quote(os.getcwd())} && env -u COLUMNS -u LINES {env} "
        f"{shlex.join(command)}; touch {done}"
    )
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "40", script)
    try:
        tmux("set-option", "-t", session, "remain-on-exit", "on")
        running = wait_for_screen(session, "ev/s", 60)
        deadline = time.monotonic() + 120
        while not done.exists():
            assert time.monotonic() < deadline, capture(session)
            time.sleep(0.1)
        return running, capture(session)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


@pytest.mark.parametrize("source", ["log", "ndjson", "ndjson-halves"])
def test_the_progress_display_shows_rate_counts_and_the_summary(
    tmp_path: Path, source: str
) -> None:
    live = live_run(tmp_path, 3_000, seed=5)
    data_dir = tmp_path / "copy"
    shutil.copytree(live.data_dir, data_dir)
    files = {"log": [], "ndjson": [str(live.ndjson)], "ndjson-halves": halves(live.ndjson)}[source]
    command = [
        sys.executable, "-m", "evalstream", "replay", *files, "--data-dir", str(data_dir),
        "--mode", "both", "--rate", "600", "--id", "shown", "--workers", "2", *live.window(),
    ]  # fmt: skip
    running, finished = in_pane(command, tmp_path)
    suffix = "" if source == "log" else f"-{source}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / f"progress-running{suffix}.txt").write_text(running)
    (ARTIFACTS / f"progress-finished{suffix}.txt").write_text(finished)

    reading = next(line for line in running.splitlines() if line.startswith("reading"))
    # A bar, events (or a file's bytes) read of the planned total, the rate, an ETA and the
    # counts so far.
    assert "━" in reading and "ev/s" in reading, reading
    assert "stored" in reading and "quarantined" in reading and "breach message" in reading, reading
    # Several partitions are shared by the two worker processes; one file is read by one.
    shared = {"log": "partitions", "ndjson": None, "ndjson-halves": "files"}[source]
    assert ("2 worker processes share" in running) == (shared is not None), running
    if shared is not None:
        assert f"2 worker processes share the {shared}" in running, running
    if source == "log":
        assert "/3000" in reading, reading
        assert "replay shown: 3000 events in" in running
    else:
        size = live.ndjson.stat().st_size
        assert f"/{size / 1e6:.1f} MB" in reading, reading
        count = len(files)
        assert f"replay shown: {size:,} bytes in {count} file{'s' * (count > 1)} to read" in running
    rows = [line for line in finished.splitlines() if line.startswith("│ app-")]
    read = next(line for line in finished.splitlines() if line.startswith("reading"))
    if source == "ndjson-halves":
        # Parts of one history: each app is detected whole once they are read.
        assert "detecting" in finished
    else:
        # The live partitions, or one file: the detectors ran while reading, and the reading
        # line counts what they found.
        assert "detecting" not in finished
        assert read.endswith(f" {len(rows)} breach message{'s' * (len(rows) != 1)}"), read
    assert "replay shown complete:" in finished and "Traceback" not in finished
    # The breach table, one row per breach message, each cell on one line at this width.
    header = next(line for line in finished.splitlines() if "signal" in line)
    assert all(word in header for word in ("app", "detector", "state", "severity", "observed"))
    if source != "ndjson-halves":
        assert len(rows) == len(live.breach_ids), finished
    else:
        assert rows, finished


def test_a_file_read_in_parts_by_app_shows_its_own_size(tmp_path: Path) -> None:
    live = live_run(tmp_path, 3_000, seed=5)
    data_dir = tmp_path / "copy"
    shutil.copytree(live.data_dir, data_dir)
    command = [
        sys.executable, "-m", "evalstream", "replay", str(live.ndjson), "--data-dir",
        str(data_dir), "--mode", "reprocess", "--rate", "1500", "--id", "parts", "--workers", "2",
        *live.window(),
    ]  # fmt: skip
    running, finished = in_pane(command, tmp_path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "progress-running-ndjson-parts.txt").write_text(running)
    (ARTIFACTS / "progress-finished-ndjson-parts.txt").write_text(finished)

    # Each part reads the whole file: the bar counts the file once, not once per part.
    size = live.ndjson.stat().st_size
    assert f"replay parts: {size:,} bytes in 1 file (2 parts by app) to read" in running, running
    assert "2 worker processes share the files" in running, running
    reading = next(line for line in running.splitlines() if line.startswith("reading"))
    assert f"/{size / 1e6:.1f} MB" in reading, reading
    read = next(line for line in finished.splitlines() if line.startswith("reading"))
    assert f"{size / 1e6:.1f}/{size / 1e6:.1f} MB" in read, read
    assert "replay parts complete:" in finished and "Traceback" not in finished
