"""A replay job's own file: what it replays, how far each partition got, and what it found.

One SQLite file per job (``<data_dir>/replays/<id>.db``). A partition's checkpoint, the
pipeline's snapshot that goes with it and the counts of what the events up to it gave are
written in one transaction, so a job killed at any instant resumes with exact counts: the
events after the checkpoint are processed again (idempotently) and counted again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from common.lock_file import try_lock
from common.sqlite import SqliteFile, sqlite3, transaction
from schemas import Breach, TelemetryDocument
from store.ports import StateSnapshot
from stream.exceptions import ReplayError, ReplayMisconfigured
from stream.replay.observed import ObservedEvent, pack, unpack
from stream.replay.ports import PartitionPlan

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
-- ``source``: the partition a part's events carry, when the row is a part of one (a file
-- read by app, or by byte ranges in jobs of earlier versions); ``app_buckets``: a part by
-- app's buckets, comma-separated.
CREATE TABLE IF NOT EXISTS partitions (
    partition TEXT PRIMARY KEY, after INTEGER NOT NULL, last INTEGER NOT NULL,
    position INTEGER NOT NULL, finished INTEGER NOT NULL DEFAULT 0,
    covered INTEGER, snapshot BLOB, source TEXT, app_buckets TEXT
);
CREATE TABLE IF NOT EXISTS counts (
    partition TEXT NOT NULL, what TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (partition, what)
);
-- Shadow detection's input when it runs after reading (a replay of several files): per
-- document what the hot path reads (stream.replay.observed). Clustered per app in source
-- order, the order detection reads an app of one file in, rather than in the order rows
-- arrive: a file interleaving every app made each app's scan touch every page (0.7-1.1
-- µs/event more). One row per stored document, as the live hot path observes each: an event
-- a producer sent twice, at two positions, is observed twice.
CREATE TABLE IF NOT EXISTS observed (
    pk TEXT NOT NULL, id TEXT NOT NULL, app TEXT NOT NULL, ts REAL NOT NULL,
    partition TEXT NOT NULL, sequence INTEGER NOT NULL, idx INTEGER NOT NULL,
    packed BLOB NOT NULL,
    PRIMARY KEY (app, partition, sequence, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unreadable (name TEXT PRIMARY KEY, error TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS detected (app TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS breaches (
    breach_id TEXT NOT NULL, state TEXT NOT NULL, app TEXT NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (breach_id, state)
);
"""

# Written with the plan. A job without this one was made by an older evalstream: it numbered
# NDJSON lines (its checkpoints mean nothing to this reader), kept shadow detection's rows by
# event time and one per document id (not what the live hot path observes), kept whole
# documents for it, or kept rows to detect after reading where detectors now run while it
# reads (their snapshots are not in its checkpoints), or has no parts of partitions or no
# parts by app (its plan table lacks their columns). ``flow.load_spec`` refuses to resume it.
FORMAT = b"6"
# Event-time order of an app's rows, built when an app's events came from several files.
_BY_TIME = (
    "CREATE INDEX IF NOT EXISTS observed_time ON observed (app, ts, partition, sequence, idx)"
)

# (query, key before the first row) of a page of an app's rows, in source or event-time order.
_BY_SOURCE_PAGE: tuple[str, tuple[Any, ...]] = (
    "SELECT partition, sequence, idx, packed FROM observed WHERE app = ? AND "
    "(partition, sequence, idx) > (?, ?, ?) ORDER BY partition, sequence, idx LIMIT ?",
    ("", -1, -1),
)
_BY_TIME_PAGE: tuple[str, tuple[Any, ...]] = (
    "SELECT ts, partition, sequence, idx, packed FROM observed WHERE app = ? AND "
    "(ts, partition, sequence, idx) > (?, ?, ?, ?) ORDER BY ts, partition, sequence, idx LIMIT ?",
    (float("-inf"), "", -1, -1),
)

# How long a job's lock may stay taken before a run is refused: the worker processes of a
# command that was killed die a moment after it, and hold the lock until then.
LOCK_WAIT_S = 5.0

STORED = "stored"
QUARANTINED = "quarantined"
# A shadow job stores nothing: it counts the events the pipeline accepted and those it
# rejected, under names that do not say they were stored or quarantined.
VALID = "valid"
INVALID = "invalid"
# Breach messages found (a progress count; the report counts the breaches kept).
BREACHES = "breaches"


def outcomes(stores: bool) -> tuple[str, str]:
    """The names a job counts its accepted and rejected events under: stored and quarantined
    when it writes to the store, valid and invalid when it does not (shadow)."""
    return (STORED, QUARANTINED) if stores else (VALID, INVALID)


# A breach found again (after a resume) replaces itself.
_KEEP_BREACH = (
    "INSERT INTO breaches VALUES (?, ?, ?, ?) "
    "ON CONFLICT (breach_id, state) DO UPDATE SET body = excluded.body"
)


def _joined(buckets: Sequence[int]) -> str | None:
    return ",".join(map(str, buckets)) if buckets else None


def _split(buckets: str | None) -> tuple[int, ...]:
    return tuple(int(bucket) for bucket in buckets.split(",")) if buckets else ()


def _breach_rows(breaches: Sequence[Breach]) -> list[tuple[str, str, str, bytes]]:
    return [
        (b.breach_id, b.state.value, b.app_id, orjson.dumps(b.model_dump(mode="json")))
        for b in breaches
    ]


@contextlib.asynccontextmanager
async def running(path: Path, job_id: str, wait_s: float = LOCK_WAIT_S) -> AsyncIterator[int]:
    """Hold the lock of job ``job_id`` (the file ``path``) while it runs: two runs of one job
    would read its partitions twice and count them twice. Yields the lock's descriptor, which
    the job's worker processes inherit and hold too."""
    deadline = time.monotonic() + wait_s
    while (handle := try_lock(path)) is None:
        if time.monotonic() >= deadline:
            holder = path.read_text().strip() or "unknown"
            # An operator's error (exit 2), like any other refused start: nothing of it ran.
            raise ReplayMisconfigured(
                f"replay job {job_id} is running in another process (pid {holder})"
            )
        await asyncio.sleep(0.05)
    try:
        yield handle.fileno()
    finally:
        handle.close()


class JobFile:
    """The file of one job. Plain methods block (the CLI before and after the run); the
    ``async`` ones run through SqliteFile so the event loop never waits on the file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = SqliteFile(path, error_type=ReplayError, schema=_SCHEMA)

    def close(self) -> None:
        self._file.close()

    async def aclose(self) -> None:
        await self._file.aclose()

    # The job's description and status.

    def get(self, key: str) -> bytes | None:
        row = self._file.run_blocking(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone(),
            "read the replay job",
        )
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                    "SET value = excluded.value",
                    (key, value),
                )

        self._file.run_blocking(write, "write the replay job")

    def create(self, spec: bytes, plans: Sequence[PartitionPlan]) -> None:
        """Record the job's description and plan, once: a job's range never changes."""

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute("INSERT INTO meta VALUES ('spec', ?)", (spec,))
                connection.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
                connection.executemany(
                    "INSERT INTO partitions (partition, after, last, position, source, "
                    "app_buckets) VALUES (?, ?, ?, ?, ?, ?)",
                    [
                        (p.partition, p.after, p.last, p.after, p.source, _joined(p.app_buckets))
                        for p in plans
                    ],
                )

        self._file.run_blocking(write, "create the replay job")

    def plans(self) -> list[tuple[PartitionPlan, int, bool]]:
        """Each partition's plan, position reached, and whether it is finished."""
        rows = self._file.run_blocking(
            lambda c: c.execute(
                "SELECT partition, after, last, source, app_buckets, position, finished "
                "FROM partitions ORDER BY rowid"
            ).fetchall(),
            "read the replay plan",
        )
        by_app = Counter(source for _, _, _, source, buckets, _, _ in rows if buckets)
        return [
            (PartitionPlan(p, a, last, source, _split(b), by_app[source] if b else 1), pos, bool(d))
            for p, a, last, source, b, pos, d in rows
        ]

    def counts(self) -> Counter[str]:
        rows = self._file.run_blocking(
            lambda c: c.execute("SELECT what, SUM(count) FROM counts GROUP BY what").fetchall(),
            "read the replay counts",
        )
        return Counter({what: int(count) for what, count in rows})

    def note_unreadable(self, found: dict[str, str]) -> None:
        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(
                    "INSERT OR IGNORE INTO unreadable VALUES (?, ?)", list(found.items())
                )

        if found:
            self._file.run_blocking(write, "record unreadable files")

    def unreadable(self) -> dict[str, str]:
        rows = self._file.run_blocking(
            lambda c: c.execute("SELECT name, error FROM unreadable ORDER BY name").fetchall(),
            "read unreadable files",
        )
        return dict(rows)

    # Progress, from the run.

    async def load_snapshot(self, partition: str) -> StateSnapshot | None:
        row = await self._file.run(
            lambda c: c.execute(
                "SELECT covered, snapshot FROM partitions WHERE partition = ?", (partition,)
            ).fetchone(),
            "read a replay snapshot",
        )
        if row is None or row[1] is None:
            return None
        return StateSnapshot("replay", partition, int(row[0]), bytes(row[1]))

    async def checkpoint(
        self,
        partition: str,
        position: int,
        snapshot: StateSnapshot | None,
        tally: Counter[str],
        finished: bool = False,
    ) -> None:
        """Move ``partition`` to ``position`` with the snapshot and counts that go with it."""

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "UPDATE partitions SET position = MAX(position, ?), finished = ? "
                    "WHERE partition = ?",
                    (position, int(finished), partition),
                )
                if snapshot is not None:
                    connection.execute(
                        "UPDATE partitions SET covered = ?, snapshot = ? WHERE partition = ?",
                        (snapshot.covered_sequence, snapshot.blob, partition),
                    )
                connection.executemany(
                    "INSERT INTO counts VALUES (?, ?, ?) ON CONFLICT (partition, what) "
                    "DO UPDATE SET count = count + excluded.count",
                    [(partition, what, n) for what, n in tally.items() if n],
                )

        await self._file.run(write, "checkpoint the replay")

    # Shadow detection.

    async def collect(self, documents: Sequence[TelemetryDocument]) -> None:
        """Keep what the detectors read of the documents: each one the pipeline stored, as the
        live hot path observes each (an event a producer sent twice, at two positions, twice)."""
        rows = [
            (
                doc.pk,
                doc.id,
                doc.app_id,
                doc.timestamp.timestamp(),
                doc.ingest.partition,
                doc.ingest.sequence,
                doc.ingest.index,
                pack(doc),
            )
            for doc in documents
        ]

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                # A conflict on the key is the same position read again (after a resume): the
                # first one stays.
                connection.executemany(
                    "INSERT OR IGNORE INTO observed VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
                )

        await self._file.run(write, "keep documents for shadow detection")

    def apps_to_detect(self) -> list[str]:
        rows = self._file.run_blocking(
            lambda c: c.execute(
                "SELECT DISTINCT app FROM observed WHERE app NOT IN (SELECT app FROM detected) "
                "ORDER BY app"
            ).fetchall(),
            "list the apps to detect",
        )
        return [row[0] for row in rows]

    async def observed(self, app: str, page_size: int = 2000) -> AsyncIterator[list[ObservedEvent]]:
        """The app's documents as the detectors read them, page by page. An app whose events
        all came from one file: in source order, late arrivals where they arrived. An app
        spread over several files (parts of one history): event-time order, ties in source
        order, through an index built for the first such app: once the read is done, in bulk,
        not row by row while collecting."""

        def spanning(connection: sqlite3.Connection) -> bool:
            row = connection.execute(
                "SELECT min(partition) < max(partition) FROM observed WHERE app = ?", (app,)
            ).fetchone()
            if not row[0]:
                return False
            with transaction(connection):
                connection.execute(_BY_TIME)
            return True

        by_time = await self._file.run(spanning, "order documents for shadow detection")
        query, last = _BY_TIME_PAGE if by_time else _BY_SOURCE_PAGE
        while True:

            def page(connection: sqlite3.Connection, after: tuple[Any, ...] = last) -> list[Any]:
                return connection.execute(query, (app, *after, page_size)).fetchall()

            rows = await self._file.run(page, "read documents for shadow detection")
            if not rows:
                return
            last = tuple(rows[-1][:-1])
            yield [unpack(app, row[-1]) for row in rows]

    async def detected(self, app: str, breaches: Sequence[Breach]) -> None:
        """Record an app's breaches and that its detection is done, together."""
        rows = _breach_rows(breaches)

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(_KEEP_BREACH, rows)
                connection.execute("INSERT OR IGNORE INTO detected VALUES (?)", (app,))

        await self._file.run(write, "record shadow breaches")

    async def keep_breaches(self, breaches: Sequence[Breach]) -> None:
        """Record breaches found while reading (detectors per partition)."""
        rows = _breach_rows(breaches)

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(_KEEP_BREACH, rows)

        await self._file.run(write, "record shadow breaches")

    def breaches(self) -> list[Breach]:
        rows = self._file.run_blocking(
            lambda c: c.execute("SELECT body FROM breaches ORDER BY app, rowid").fetchall(),
            "read shadow breaches",
        )
        return [Breach.model_validate_json(row[0]) for row in rows]
