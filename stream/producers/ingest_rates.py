"""Token buckets per (sender, app) for ingest's rate limits, in one process or shared by several.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a request takes one
token per event from the bucket of each app it posts for, all or none. ``MemoryBuckets`` keeps
them in the process (ingest served by the processor's own process); ``SqliteBuckets`` keeps them
in a small SQLite file that every ingest worker process opens, so a key's rate holds for the
whole service however its requests spread over the workers (one short write transaction per
request of a key with a rate; times are ``time.monotonic``, which is system-wide on Linux).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from common.sqlite import SqliteFile, transaction
from stream.exceptions import StreamError

# (tokens, when they were counted) of one bucket.
State = tuple[float, float]


class Buckets(Protocol):
    def take(
        self, sender: str, rate: float, burst: int, wants: Mapping[str, int], now: float
    ) -> tuple[str, float] | None:
        """Take ``wants[app]`` tokens from each of the sender's app buckets when every one
        holds enough, and return None; otherwise take nothing and return the app with the
        longest wait and that wait in seconds (``inf``: more than ``burst``, never fits)."""
        ...


def decide(
    states: Mapping[str, State | None],
    rate: float,
    burst: int,
    wants: Mapping[str, int],
    now: float,
) -> tuple[dict[str, State], tuple[str, float] | None]:
    """The buckets' states after refilling to ``now`` and, when nothing waits, taking
    ``wants``; with the longest wait when something must (see ``Buckets.take``)."""
    refilled = {}
    for app in wants:
        tokens, at = states.get(app) or (float(burst), now)
        refilled[app] = min(float(burst), tokens + (now - at) * rate)
    waits = {
        app: math.inf if n > burst else max(0.0, (n - refilled[app]) / rate)
        for app, n in wants.items()
    }
    app, wait = max(waits.items(), key=lambda item: item[1])
    if wait > 0:
        return {app: (tokens, now) for app, tokens in refilled.items()}, (app, wait)
    return {app: (refilled[app] - wants[app], now) for app in wants}, None


class MemoryBuckets:
    def __init__(self) -> None:
        self._states: dict[tuple[str, str], State] = {}

    def take(
        self, sender: str, rate: float, burst: int, wants: Mapping[str, int], now: float
    ) -> tuple[str, float] | None:
        states = {app: self._states.get((sender, app)) for app in wants}
        after, waiting = decide(states, rate, burst, wants, now)
        for app, state in after.items():
            self._states[(sender, app)] = state
        return waiting


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    sender TEXT NOT NULL, app TEXT NOT NULL, tokens REAL NOT NULL, at REAL NOT NULL,
    PRIMARY KEY (sender, app)
) WITHOUT ROWID;
"""


class SqliteBuckets:
    """Buckets in a SQLite file shared by processes; the caller's thread does the (short)
    transaction: this runs inside a request, between an event loop's other work."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, error_type=StreamError, schema=_SCHEMA, synchronous="OFF")

    def close(self) -> None:
        self._file.close()

    def take(
        self, sender: str, rate: float, burst: int, wants: Mapping[str, int], now: float
    ) -> tuple[str, float] | None:
        def run(connection: sqlite3.Connection) -> tuple[str, float] | None:
            with transaction(connection):
                states: dict[str, State | None] = {}
                for app in wants:
                    row = connection.execute(
                        "SELECT tokens, at FROM buckets WHERE sender = ? AND app = ?",
                        (sender, app),
                    ).fetchone()
                    states[app] = (row[0], row[1]) if row else None
                after, waiting = decide(states, rate, burst, wants, now)
                connection.executemany(
                    "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?)",
                    [(sender, app, tokens, at) for app, (tokens, at) in after.items()],
                )
            return waiting

        return self._file.run_blocking(run, "count the ingest rate")
