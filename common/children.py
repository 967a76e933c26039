"""Signalling a child process started with asyncio without reaping it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


def signal_child(process: asyncio.subprocess.Process, signum: int = signal.SIGKILL) -> None:
    """Send ``signum`` to ``process`` unless asyncio has seen it exit.

    Not ``process.send_signal()`` / ``kill()``: those poll first (``Popen.send_signal``), which
    reaps a child that has just exited, and asyncio's child watcher, finding it gone, then
    reports 255 instead of its exit code. A signal to a child that has exited but is not yet
    reaped does nothing; one already reaped is gone (ProcessLookupError).
    """
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signum)
