"""What Linux says about a process's signals (/proc/PID/status), for tests."""

from __future__ import annotations

from pathlib import Path


def signal_set(pid: int, field: str) -> set[int]:
    """The signal numbers in a mask of the process's status: ``SigBlk`` (its main thread
    blocks them), ``SigCgt`` (it has handlers for them). FileNotFoundError when it is gone."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}
