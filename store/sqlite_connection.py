"""How every embedded SQLite file is opened: WAL, a busy timeout, durable commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

BUSY_TIMEOUT_MS = 30_000
CACHE_KIB = 32 * 1024
# Pages of new files. Rows here are ~1-2 KB JSON documents or event bodies: with SQLite's
# 4 KiB default only two fit a page, and an upsert batch costs ~25% more CPU (splits, WAL
# frames, checkpoint copies) than with 16 KiB pages (measured, bench/results/processor.md).
DEFAULT_PAGE_SIZE = 16 * 1024


def connect(
    path: Path, *, check_same_thread: bool = True, page_size: int = DEFAULT_PAGE_SIZE
) -> sqlite3.Connection:
    """Open (creating folders) a SQLite file for concurrent use by several processes.

    WAL lets readers and one writer work at once; synchronous=NORMAL in WAL mode keeps every
    committed transaction across a process crash (kill -9), which is the failure the
    processor's checkpoint-last ordering is built for. Power loss may drop the last commits.
    ``page_size`` applies to files this call creates (SQLite keeps an existing file's).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=check_same_thread,
    )
    # Before journal_mode: a new file gets its page size when its first page is written.
    connection.execute(f"PRAGMA page_size={int(page_size)}")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    return connection
