"""The embedded store: telemetry, quarantine and processor state in one SQLite file.

Opened with the shared SQLite recipe (``common.sqlite``): every call is a plain function of the
connection run on the file's worker thread, so the event loop never waits on the write lock
(another process writing the same file) or an fsync; ``sqlite3`` errors come out as
``StoreError``, or ``StoreUnavailable`` (retryable) when the file is locked or the disk full.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import orjson

from common.sqlite import SqliteFile, connect, map_error, sqlite3, transaction
from schemas import QuarantineRecord, TelemetryDocument
from store import sqlite_breaches
from store.exceptions import StoreError, StoreUnavailable
from store.ports import KeptBreach, StateSnapshot, window_days

# Rowid tables with a unique key rather than WITHOUT ROWID: documents are ~1-2 KB, and SQLite
# advises WITHOUT ROWID only for rows much smaller than a page (measured: 4x slower upserts).
#
# A telemetry document's key is (pk, id), but its unique index is (pk, ts, id): ids are random
# (a content hash, or a producer's event_id), so an index led by (pk, id) took each row to a
# random page of its app-day, and once an app-day outgrew a batch every row dirtied a 16 KiB
# page of its own (WAL, checkpoint), the write cost growing 4x over a million documents
# (bench/results/store_scale.md). Led by the time, an app's rows land together. It is the same
# key for a content id: equal ids are equal events, so equal times. A producer's event_id
# ("named" rows) can come back with another event at another time, which must be refused as
# before, so those rows keep a (pk, id) index of their own. Not covered: a producer's event_id
# equal to the content id of another event of the same app and day (two 128-bit hashes
# colliding, or a producer copying one). The same key reads an app's window: its pk for each day,
# in day order (as the Cosmos store reads it).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    id TEXT NOT NULL, pk TEXT NOT NULL, app_id TEXT NOT NULL, ts REAL NOT NULL, doc BLOB NOT NULL,
    named INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT NOT NULL, pk TEXT NOT NULL, received REAL NOT NULL, doc BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_key ON quarantine (pk, id);
CREATE TABLE IF NOT EXISTS state (
    consumer_group TEXT NOT NULL, partition TEXT NOT NULL, covered_sequence INTEGER NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (consumer_group, partition)
);
CREATE TABLE IF NOT EXISTS written (
    source TEXT NOT NULL, partition TEXT NOT NULL, sequence INTEGER NOT NULL,
    PRIMARY KEY (source, partition)
);
"""
# The last source position the store holds a document or record of, per source and partition:
# written with them, so an embedded log that lost its end (a power cut) numbers new events
# after them even when no snapshot covers them yet (store.ports.written_sequences).
_WRITTEN = (
    "INSERT INTO written (source, partition, sequence) VALUES (?, ?, ?) "
    "ON CONFLICT (source, partition) DO UPDATE SET sequence = excluded.sequence "
    "WHERE excluded.sequence > written.sequence"
)
_KEYS = """
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_time_key ON telemetry (pk, ts, id);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_named_key ON telemetry (pk, id) WHERE named;
"""
# Files made before the time-led key have no ``named`` column and keep their (pk, id) index, and
# their (app_id, ts) index for window reads; the time-led key serves those (one pk per app and
# day, store.ports.window_days), one index fewer to write.
_LEGACY_KEY = """
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_key ON telemetry (pk, id);
CREATE INDEX IF NOT EXISTS telemetry_app_ts ON telemetry (app_id, ts);
"""


# The SQL function ``event_key`` (``_event_key``), registered on the store's connection.
_EVENT_KEY = "event_key"


def _event_key(event: str) -> bytes:
    """The canonical text of a JSON value: its objects' keys sorted, so that the same event
    sent with its keys in another order (metadata, scores: JSON objects are unordered) gives
    the same text. Types stay apart (``true`` and ``1``, ``1`` and ``1.0`` differ), which
    comparing the values in Python would not keep. orjson reads every number the contract
    admits exactly (integers to 64 bits, floats)."""
    return orjson.dumps(orjson.loads(event), option=orjson.OPT_SORT_KEYS)


def _event_of(doc: str) -> str:
    """SQL for the event a document (the column or parameter ``doc``) holds, as canonical text
    (``_event_key``): the document without what the processor adds (ingest, app, derived
    fields), its user pseudonyms (``user_hash``, ``metadata.user_id``) reduced to whether it has
    them. Their values are made with a key, not sent: another key, or an older version that
    kept metadata.user_id raw, gives other values for the same event."""
    text = f"CAST({doc} AS TEXT)"
    return (
        f"{_EVENT_KEY}(json_replace(json_remove({text}, '$.ingest', '$.app', '$.derived'), "
        f"'$.user_hash', json_type({text}, '$.user_hash'), '$.metadata.user_id', ''))"
    )


# A document replaces the stored one of its id only when both carry the same event (a re-read,
# a replay, an enrichment fix, a change of key). The WHERE runs only on a key conflict, so new
# ids cost nothing; a named row found at another time is another event, left alone. (The
# statements are made of constants only.)
_SAME = f"{_event_of('telemetry.doc')} = {_event_of('excluded.doc')}"
_UPSERT_TELEMETRY = (
    "INSERT INTO telemetry (id, pk, app_id, ts, doc, named) VALUES (?, ?, ?, ?, ?, ?) "  # noqa: S608
    "ON CONFLICT (pk, ts, id) DO UPDATE SET app_id = excluded.app_id, doc = excluded.doc "
    f"WHERE {_SAME} "
    "ON CONFLICT (pk, id) WHERE named DO NOTHING"
)
_LEGACY_UPSERT_TELEMETRY = (
    "INSERT INTO telemetry (id, pk, app_id, ts, doc) VALUES (?, ?, ?, ?, ?) "  # noqa: S608
    "ON CONFLICT (pk, id) DO UPDATE SET "
    f"app_id = excluded.app_id, ts = excluded.ts, doc = excluded.doc WHERE {_SAME}"
)
# Whether the stored document of (pk, id) holds the same event; numbered parameters: ?1 the
# document, ?2 pk, ?3 id, ?4 ts. Each branch is one index's lookup (an OR would scan the day).
_SAME_EVENT = (
    f"SELECT {_event_of('doc')} = {_event_of('?1')} FROM telemetry "  # noqa: S608
    "WHERE pk = ?2 AND ts = ?4 AND id = ?3 UNION ALL "
    f"SELECT {_event_of('doc')} = {_event_of('?1')} FROM telemetry "
    "WHERE pk = ?2 AND id = ?3 AND named LIMIT 1"
)
_LEGACY_SAME_EVENT = (
    f"SELECT {_event_of('doc')} = {_event_of('?1')} FROM telemetry WHERE pk = ?2 AND id = ?3"  # noqa: S608
)
# A point read: the named rows' index, else the app-day's rows by the time-led key.
_GET_TELEMETRY = (
    "SELECT doc FROM telemetry WHERE pk = ?1 AND id = ?2 AND named UNION ALL "
    "SELECT doc FROM telemetry WHERE pk = ?1 AND id = ?2 LIMIT 1"
)
_LEGACY_GET_TELEMETRY = "SELECT doc FROM telemetry WHERE pk = ?1 AND id = ?2"
# The apps with telemetry in [start, end) on the time-led key: its distinct pks walked with one
# index seek each (a pk ends with its day, ``:YYYY-MM-DD``), those of the window's days kept when
# one of their rows falls in it. Numbered parameters: ?1 and ?2 the first and last day, ?3 and ?4
# the window's bounds.
_APPS_BETWEEN = """
WITH RECURSIVE pks(pk) AS (
    SELECT min(pk) FROM telemetry
    UNION ALL
    SELECT (SELECT min(pk) FROM telemetry WHERE pk > pks.pk) FROM pks WHERE pks.pk IS NOT NULL
)
SELECT DISTINCT substr(pk, 1, length(pk) - 11) AS app_id FROM pks
WHERE pk IS NOT NULL AND substr(pk, -10) BETWEEN ?1 AND ?2
    AND EXISTS (SELECT 1 FROM telemetry WHERE telemetry.pk = pks.pk AND ts >= ?3 AND ts < ?4)
ORDER BY app_id
"""
_LEGACY_APPS_BETWEEN = (
    "SELECT DISTINCT app_id FROM telemetry WHERE ts >= ?3 AND ts < ?4 ORDER BY app_id"
)
_UPSERT_QUARANTINE = (
    "INSERT INTO quarantine (id, pk, received, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pk, id) DO UPDATE SET received = excluded.received, doc = excluded.doc"
)


@dataclass(frozen=True)
class _Layout:
    """The telemetry statements of a file's layout (time-led key, or the legacy one)."""

    upsert: str
    same_event: str
    get: str
    apps_between: str
    indexes: str
    time_led: bool


_TIME_LED = _Layout(
    _UPSERT_TELEMETRY, _SAME_EVENT, _GET_TELEMETRY, _APPS_BETWEEN, _KEYS, time_led=True
)
_LEGACY = _Layout(
    _LEGACY_UPSERT_TELEMETRY,
    _LEGACY_SAME_EVENT,
    _LEGACY_GET_TELEMETRY,
    _LEGACY_APPS_BETWEEN,
    _LEGACY_KEY,
    time_led=False,
)


def _telemetry_columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute("PRAGMA table_info(telemetry)")}


def _layout_of(columns: set[str]) -> _Layout:
    return _TIME_LED if "named" in columns else _LEGACY


def _layout(connection: sqlite3.Connection, make_indexes: bool = True) -> _Layout:
    """The file's layout, its key indexes made if missing (a new file, or one being opened by
    several processes at once: ``IF NOT EXISTS``), and ``event_key`` registered for its
    statements (deterministic: SQLite may compute it once for a statement's document)."""
    connection.create_function(_EVENT_KEY, 1, _event_key, deterministic=True)
    layout = _layout_of(_telemetry_columns(connection))
    if make_indexes:
        connection.executescript(layout.indexes)
    return layout


@dataclass(frozen=True)
class KeyUpgrade:
    """What ``upgrade_key`` changed: the documents it re-keyed, and how many of them carry a
    producer's event_id (named rows)."""

    documents: int
    named: int


def upgrade_key(path: Path) -> KeyUpgrade | None:
    """Give a store file made before the time-led key that key, in one transaction: each row
    is marked named when its document has an event_id, the two indexes are built and the
    (pk, id) and (app_id, ts) indexes dropped. No document changes. Returns None when the
    file has the key already or no telemetry table. The file's other writers wait for the
    transaction (up to their busy timeout), so this is best run with the processor stopped.
    Building the indexes reads every document once."""
    try:
        connection = connect(path)
    except sqlite3.Error as exc:
        raise map_error(exc, f"opening {path}", StoreError, StoreUnavailable) from exc
    try:
        with transaction(connection):
            columns = _telemetry_columns(connection)
            # No telemetry table yet (another of the file's tables made it): the store makes
            # the table with the key.
            if not columns or _layout_of(columns).time_led:
                return None
            connection.execute("ALTER TABLE telemetry ADD COLUMN named INTEGER NOT NULL DEFAULT 0")
            connection.execute(
                "UPDATE telemetry SET named = 1 "
                "WHERE json_extract(CAST(doc AS TEXT), '$.event_id') IS NOT NULL"
            )
            # One statement at a time: executescript would commit the transaction first.
            for statement in filter(None, (line.strip() for line in _KEYS.split(";"))):
                connection.execute(statement)
            connection.execute("DROP INDEX telemetry_key")
            connection.execute("DROP INDEX IF EXISTS telemetry_app_ts")
            documents, named = connection.execute(
                "SELECT count(*), coalesce(sum(named), 0) FROM telemetry"
            ).fetchone()
        return KeyUpgrade(int(documents), int(named))
    except sqlite3.Error as exc:
        raise map_error(
            exc, f"upgrading the telemetry key of {path}", StoreError, StoreUnavailable
        ) from exc
    finally:
        connection.close()


class SqliteStore:
    """TelemetryStore on SQLite (WAL): the processor writes while the cold path and tools read."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """``read_only``: an existing file, only read (status, report: the data dir unchanged)."""
        self.path = path
        self._file = SqliteFile(
            path,
            error_type=StoreError,
            transient_type=StoreUnavailable,
            schema=_SCHEMA + sqlite_breaches.SCHEMA,
            read_only=read_only,
        )
        self._layout = self._file.run_blocking(
            functools.partial(_layout, make_indexes=not read_only), "open the telemetry keys"
        )

    async def __aenter__(self) -> SqliteStore:
        self._check_open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._file.aclose()

    def _check_open(self) -> None:
        if self._file.closed:
            raise StoreError(f"store {self.path} is closed")

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        self._check_open()
        layout = self._layout
        telemetry: list[tuple[Any, ...]] = [
            (
                doc.id,
                doc.pk,
                doc.app_id,
                doc.timestamp.timestamp(),
                doc.json_bytes(),
                doc.event_id is not None,
            )
            for doc in documents
        ]
        if not layout.time_led:
            telemetry = [row[:5] for row in telemetry]  # no named column
        quarantine = [
            (rec.id, rec.pk, rec.received_at.timestamp(), rec.model_dump_json())
            for rec in quarantined
        ]
        written = _last_positions(documents, quarantined)

        def write(connection: sqlite3.Connection) -> list[int]:
            with transaction(connection):
                conflicts: list[int] = []
                if telemetry:
                    before = connection.total_changes
                    connection.executemany(layout.upsert, telemetry)
                    if connection.total_changes - before < len(telemetry):
                        conflicts = _conflicts(connection, layout, telemetry)
                if quarantine:
                    connection.executemany(_UPSERT_QUARANTINE, quarantine)
                if written:
                    connection.executemany(_WRITTEN, written)
                return conflicts

        conflicts = await self._file.run(write, "write telemetry")
        return [documents[index] for index in conflicts]

    async def written_sequences(self, source: str) -> dict[str, int]:
        """Per partition of ``source``, the last sequence of a document or quarantine record
        the store holds (stores written by versions before this table: none)."""
        self._check_open()

        def read(connection: sqlite3.Connection) -> dict[str, int]:
            rows = connection.execute(
                "SELECT partition, sequence FROM written WHERE source = ?", (source,)
            )
            return {str(partition): int(sequence) for partition, sequence in rows}

        return await self._file.run(read, "read the written positions")

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None:
        self._check_open()

        def read(connection: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = connection.execute(
                "SELECT covered_sequence, blob FROM state "
                "WHERE consumer_group = ? AND partition = ?",
                (consumer_group, partition),
            ).fetchone()
            return None if row is None else (int(row[0]), bytes(row[1]))

        row = await self._file.run(read, "load state")
        return None if row is None else StateSnapshot(consumer_group, partition, *row)

    async def save_state(self, snapshot: StateSnapshot, *, replace: bool = False) -> None:
        self._check_open()
        row = (
            snapshot.consumer_group,
            snapshot.partition,
            snapshot.covered_sequence,
            snapshot.blob,
        )

        def write(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO state (consumer_group, partition, covered_sequence, blob) "
                "VALUES (?, ?, ?, ?) "
                "ON CONFLICT (consumer_group, partition) DO UPDATE SET "
                "covered_sequence = excluded.covered_sequence, blob = excluded.blob "
                # Never backwards: a late batch of an owner that lost the partition must not
                # replace the new owner's snapshot with an older one.
                "WHERE excluded.covered_sequence >= state.covered_sequence OR ?",
                (*row, replace),
            )

        await self._file.run(write, "save state")

    async def keep_breaches(
        self, consumer_group: str, partition: str, breaches: Sequence[KeptBreach]
    ) -> None:
        self._check_open()
        await self._file.run(
            lambda connection: sqlite_breaches.keep(
                connection, consumer_group, partition, breaches
            ),
            "keep breaches",
        )

    async def kept_breaches(
        self, consumer_group: str, partition: str, first: int, last: int
    ) -> list[KeptBreach]:
        self._check_open()
        return await self._file.run(
            lambda connection: sqlite_breaches.kept(
                connection, consumer_group, partition, first, last
            ),
            "read kept breaches",
        )

    async def get_telemetry(self, document_id: str, pk: str) -> TelemetryDocument | None:
        self._check_open()

        def read(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(self._layout.get, (pk, document_id)).fetchone()
            return None if row is None else bytes(row[0])

        doc = await self._file.run(read, "read telemetry")
        return None if doc is None else TelemetryDocument.model_validate_json(doc)

    async def count(self, kind: str) -> int:
        self._check_open()
        if kind not in ("telemetry", "quarantine"):
            raise StoreError(f"unknown record kind {kind!r}: expected telemetry or quarantine")

        def read(connection: sqlite3.Connection) -> int:
            return int(connection.execute(f"SELECT count(*) FROM {kind}").fetchone()[0])  # noqa: S608

        return await self._file.run(read, f"count {kind}")

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the store's file can be opened and read now (a fresh
        connection: the open one keeps working on a file that was removed or unmounted)."""
        self._check_open()

        def read() -> None:
            try:
                connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
                try:
                    connection.execute("SELECT 1 FROM state LIMIT 1").fetchall()
                finally:
                    connection.close()
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path} cannot be read: {exc}") from exc

        await asyncio.to_thread(read)

    async def telemetry_ids(self) -> list[tuple[str, str]]:
        """Every (pk, id) stored; for verification tools and tests."""
        self._check_open()

        def read(connection: sqlite3.Connection) -> list[tuple[str, str]]:
            return [(row[0], row[1]) for row in connection.execute("SELECT pk, id FROM telemetry")]

        return await self._file.run(read, "list telemetry ids")

    async def telemetry_window(
        self, app_ids: Sequence[str], start: datetime, end: datetime, page_size: int = 1000
    ) -> AsyncIterator[list[TelemetryDocument]]:
        self._check_open()
        for app_id in app_ids:
            # The time-led key: the app's pk of each day, in day order; an earlier file: the
            # (app_id, ts) index.
            scopes: list[tuple[Literal["pk", "app_id"], str]] = (
                [("pk", f"{app_id}:{day.isoformat()}") for day in window_days(start, end)]
                if self._layout.time_led
                else [("app_id", app_id)]
            )
            # Keyset paging on (ts, id), on through the days: every id sorts after "", so the
            # first page starts at start inclusive. A page fills across days: pages hold
            # page_size documents but the app's last.
            last_ts, last_id = start.timestamp(), ""
            page: list[TelemetryDocument] = []
            for column, value in scopes:
                while True:
                    wanted = page_size - len(page)
                    rows = await self._file.run(
                        _window_page(column, value, end.timestamp(), last_ts, last_id, wanted),
                        f"read window of {app_id}",
                    )
                    if not rows:
                        break
                    last_ts, last_id = rows[-1][0], rows[-1][1]
                    page.extend(TelemetryDocument.model_validate_json(row[2]) for row in rows)
                    if len(page) == page_size:
                        yield page
                        page = []
            if page:
                yield page

    async def quarantine_records(self, limit: int = 100) -> AsyncIterator[QuarantineRecord]:
        self._check_open()

        def read(connection: sqlite3.Connection) -> list[bytes]:
            return [
                row[0]
                for row in connection.execute(
                    "SELECT doc FROM quarantine ORDER BY received DESC LIMIT ?", (limit,)
                )
            ]

        for doc in await self._file.run(read, "read quarantine"):
            yield QuarantineRecord.model_validate_json(doc)


def _last_positions(
    documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
) -> list[tuple[str, str, int]]:
    """(source, partition, last sequence) of what a write holds from a source: its last
    document's position (a batch's documents come in their partition's order, as the pipeline
    writes them: reading every document's would cost ~0.6 µs each) and every quarantine
    record's (few, and the ones a reused number would replace)."""
    last: dict[tuple[str, str], int] = {}
    if documents:
        ingest = documents[-1].ingest
        last[(ingest.source, ingest.partition)] = ingest.sequence
    for record in quarantined:
        if record.partition is not None and record.sequence is not None:
            key = (record.source, record.partition)
            if last.get(key, -1) < record.sequence:
                last[key] = record.sequence
    return [(source, partition, sequence) for (source, partition), sequence in last.items()]


def _conflicts(
    connection: sqlite3.Connection, layout: _Layout, telemetry: Sequence[tuple[Any, ...]]
) -> list[int]:
    """Indexes of the rows the upsert left alone: another event holds their id."""
    conflicts = []
    for index, row in enumerate(telemetry):
        doc_id, pk, _, ts, doc = row[:5]
        parameters = (doc, pk, doc_id, ts) if layout.time_led else (doc, pk, doc_id)
        same = connection.execute(layout.same_event, parameters).fetchone()
        if same is not None and not same[0]:
            conflicts.append(index)
    return conflicts


def _window_page(
    column: Literal["pk", "app_id"],
    value: str,
    end: float,
    last_ts: float,
    last_id: str,
    page_size: int,
) -> Callable[[sqlite3.Connection], list[tuple[float, str, bytes]]]:
    """One keyset page of the telemetry of a pk or an app after (last_ts, last_id), before
    ``end``."""

    def read(connection: sqlite3.Connection) -> list[tuple[float, str, bytes]]:
        return connection.execute(
            # `ts >= ?` on its own gives the index scan its lower bound: with only the OR, SQLite
            # bounds it from above and every page walks the app's whole earlier history.
            f"SELECT ts, id, doc FROM telemetry WHERE {column} = ? AND ts < ? AND ts >= ? AND "  # noqa: S608
            "(ts > ? OR id > ?) ORDER BY ts, id LIMIT ?",
            (value, end, last_ts, last_ts, last_id, page_size),
        ).fetchall()

    return read


def apps_between(connection: sqlite3.Connection, start: datetime, end: datetime) -> list[str]:
    """The apps with telemetry stored in [start, end) (none before the table exists)."""
    columns = _telemetry_columns(connection)
    days = window_days(start, end)
    if not columns or not days:
        return []
    parameters = (days[0].isoformat(), days[-1].isoformat(), start.timestamp(), end.timestamp())
    return [row[0] for row in connection.execute(_layout_of(columns).apps_between, parameters)]
