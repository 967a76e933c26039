"""Exclusive lock files: one holder at a time, released by the kernel however the holder dies."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO


def try_lock(path: Path) -> IO[str] | None:
    """Take the exclusive lock of ``path`` (created if missing) and write our pid in it; None
    when another process holds it. The lock lasts while the returned file is open, and the
    kernel drops it when the process dies, however it dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 (the caller keeps it open: that is the lock)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
