"""The embedded backend's data dir, checked before anything opens a file in it: a read-only or
full disk is one clear line at start, not a SQLite error from whichever file came first."""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from pathlib import Path

from evalstream.settings import SettingsError

# Written, synced and removed at start: room for SQLite to open its files and write a batch.
PROBE_BYTES = 1024 * 1024
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_FILES = ("log.db", "store.db", "alerts.db")
_HINT = (
    "evalstream keeps its event log, store and alert bus there; {fix} or choose another "
    "directory (--data-dir, embedded.data_dir)"
)


@functools.cache
def usable_data_dir(path: Path) -> Path:
    """``path``, created if missing, once a write of PROBE_BYTES in it succeeded and its
    database files (if any) are writable; else raise SettingsError saying which and why."""
    if path.exists() and not path.is_dir():
        raise SettingsError(
            f"embedded.data_dir: {path} is not a directory; choose another directory "
            "(--data-dir, embedded.data_dir)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-") as probe:
            probe.write(bytes(PROBE_BYTES))
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        full = exc.errno in _FULL
        state, fix = ("is full", "free space") if full else ("is not writable", "allow writes")
        # Full is passing (as SQLite's "disk is full"): a worker process started while the
        # disk is full is started again later, where a command starting then stops at once.
        raise SettingsError(
            f"embedded.data_dir: {path} {state} ({exc.strerror}); {_HINT.format(fix=fix)}",
            retryable=full,
        ) from None
    for name in _FILES:
        for file in (path / name, path / f"{name}-wal", path / f"{name}-shm"):
            if file.exists() and not os.access(file, os.W_OK):
                hint = _HINT.format(fix="allow writes")
                raise SettingsError(f"embedded.data_dir: {file} is read-only; {hint}")
    return path
