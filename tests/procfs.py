"""What Linux says about a process (/proc/PID): its signals, its environment; for tests."""

from __future__ import annotations

from pathlib import Path


def signal_set(pid: int, field: str) -> set[int]:
    """The signal numbers in a mask of the process's status: ``SigBlk`` (its main thread
    blocks them), ``SigCgt`` (it has handlers for them). FileNotFoundError when it is gone."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith(f"{field}:"))
    mask = int(line.split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


def environment(pid: int) -> dict[str, str]:
    """The environment process ``pid`` was started with (/proc/PID/environ)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)
