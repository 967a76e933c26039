"""Exclusive lock files: one holder at a time, released by the kernel however the holder dies."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import IO

from common.errors import Misconfigured

# A full disk passes: the same start may succeed later (as the data dir's check says).
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class LockFileError(Misconfigured):
    """A lock file cannot be created, opened, locked or written (a directory in its place, a
    read-only or immutable file, a file system without locks); the message names the file and
    the cause. Retryable only when the disk is full."""


def try_lock(path: Path) -> IO[str] | None:
    """Take the exclusive lock of ``path`` (created if missing) and write our pid in it; None
    when another process holds it. The lock lasts while the returned file is open, and the
    kernel drops it when the process dies, however it dies. Raises LockFileError when the
    file cannot be used as a lock, never a bare OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 (the caller keeps it open: that is the lock)
    except OSError as exc:
        raise _unusable(path, exc) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError as exc:
        handle.close()
        raise _unusable(path, exc) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
    except OSError as exc:
        # Closing flushes again what could not be written (a full disk): it fails the same.
        with contextlib.suppress(OSError):
            handle.close()
        raise _unusable(path, exc) from None
    return handle


def _unusable(path: Path, exc: OSError) -> LockFileError:
    cause = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return LockFileError(
            f"lock file {path} cannot be written ({cause}); free space", retryable=True
        )
    return LockFileError(
        f"lock file {path} cannot be used ({cause}); make it a writable file, or remove it "
        "and allow writes to its directory"
    )
