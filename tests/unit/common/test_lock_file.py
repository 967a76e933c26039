"""Lock files: a file that cannot be a lock is one project error naming it (exit 2 at the
command line), never an OSError traceback; a lock another process holds is None."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from common.errors import Misconfigured
from common.lock_file import LockFileError, try_lock
from stream.replay.job import running


def test_a_lock_is_taken_once_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.lock"
    held = try_lock(path)
    assert held is not None
    try:
        assert path.read_text().isdigit()
        assert try_lock(path) is None
    finally:
        held.close()
    again = try_lock(path)
    assert again is not None
    again.close()


def test_a_directory_in_the_lock_files_place_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "processor.lock"
    path.mkdir()
    with pytest.raises(LockFileError, match=rf"lock file {path} cannot be used \(Is a directory\)"):
        try_lock(path)


def test_a_lock_under_a_file_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "partitions").write_text("")
    with pytest.raises(LockFileError, match=r"partitions/0\.lock cannot be used") as caught:
        try_lock(tmp_path / "partitions" / "0.lock")
    assert isinstance(caught.value, Misconfigured)
    assert not caught.value.retryable


def test_a_file_system_refusing_locks_is_one_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_locks(*_: Any) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(LockFileError, match=r"x.lock cannot be used \(No locks available\)"):
        try_lock(tmp_path / "x.lock")


def test_a_full_disk_is_a_passing_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_: Any, **__: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(LockFileError, match="free space") as caught:
        try_lock(tmp_path / "x.lock")
    assert caught.value.retryable


class _FullFile:
    """A lock file on a full disk: opened and locked, its pid never written. Like a buffered
    file, closing it flushes again and fails the same."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def flush(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.real.close()
        self.flush()


def test_a_lock_file_whose_pid_the_full_disk_refuses_is_a_passing_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Closing it raised the bare OSError again: a traceback at start instead of one line."""
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: _FullFile(real_open(*a, **k)))
    with pytest.raises(LockFileError, match="free space") as caught:
        try_lock(tmp_path / "x.lock")
    assert caught.value.retryable


async def test_a_replay_jobs_lock_that_is_a_directory_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    path.mkdir()
    with pytest.raises(LockFileError, match=r"job\.lock cannot be used"):
        async with running(path, "job-1", wait_s=0):
            pass


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_processor_refuses_an_unusable_lock_in_one_line(tmp_path: Path, workers: str) -> None:
    # The supervisor's lock (processor.lock) with one worker, a worker's partition lock with two.
    lock = tmp_path / ("processor.lock" if workers == "1" else "partitions/0.lock")
    lock.mkdir(parents=True)
    command = ["process", "--data-dir", str(tmp_path), "--workers", workers, "--no-ingest"]
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *command],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")},
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert f"lock file {lock} cannot be used (Is a directory)" in result.stderr
    assert "Traceback" not in result.stderr
