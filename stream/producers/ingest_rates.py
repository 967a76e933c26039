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
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from common.sqlite import SqliteFile, sqlite3, transaction
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
    if not wants:  # a request whose events were all rejected: nothing to take
        return {}, None
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


def full_at(state: State, rate: float, burst: int) -> float:
    """When a bucket in ``state`` is full again: from then on it is the same as no bucket, so
    it can be forgotten (app ids are the producers' to choose: buckets must not pile up)."""
    tokens, at = state
    return at + (burst - tokens) / rate


# Forgetting full buckets is looked at once this many are kept, and then as their number doubles.
PRUNE_ABOVE = 10_000


class MemoryBuckets:
    def __init__(self) -> None:
        self._states: dict[tuple[str, str], tuple[State, float]] = {}
        self._prune_above = PRUNE_ABOVE

    def take(
        self, sender: str, rate: float, burst: int, wants: Mapping[str, int], now: float
    ) -> tuple[str, float] | None:
        kept = self._states
        states = {app: kept.get((sender, app), (None, 0.0))[0] for app in wants}
        after, waiting = decide(states, rate, burst, wants, now)
        for app, state in after.items():
            kept[sender, app] = (state, full_at(state, rate, burst))
        if len(kept) > self._prune_above:
            for key in [key for key, (_, full) in kept.items() if full <= now]:
                del kept[key]
            self._prune_above = max(PRUNE_ABOVE, 2 * len(kept))
        return waiting

    def __len__(self) -> int:
        return len(self._states)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (
    sender TEXT NOT NULL, app TEXT NOT NULL, tokens REAL NOT NULL, at REAL NOT NULL,
    full_at REAL NOT NULL, PRIMARY KEY (sender, app)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS buckets_full ON buckets (full_at);
"""
# Full buckets are deleted every this many takes (the file is per run: no older layout).
PRUNE_EVERY = 1000


class SqliteBuckets:
    """Buckets in a SQLite file shared by processes; the caller's thread does the (short)
    transaction: this runs inside a request, between an event loop's other work."""

    def __init__(self, path: Path) -> None:
        self._file = SqliteFile(path, error_type=StreamError, schema=_SCHEMA, synchronous="OFF")
        self._takes = 0

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
                    "INSERT OR REPLACE INTO buckets VALUES (?, ?, ?, ?, ?)",
                    [
                        (sender, app, *state, full_at(state, rate, burst))
                        for app, state in after.items()
                    ],
                )
                if self._takes % PRUNE_EVERY == 0:
                    connection.execute("DELETE FROM buckets WHERE full_at <= ?", (now,))
            return waiting

        self._takes += 1
        return self._file.run_blocking(run, "count the ingest rate")
