"""The embedded store: telemetry, quarantine and processor state in one SQLite file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from schemas import QuarantineRecord, TelemetryDocument
from store.exceptions import StoreError
from store.ports import StateSnapshot
from store.sqlite_connection import connect

# Rowid tables with a unique key rather than WITHOUT ROWID: documents are ~1-2 KB, and SQLite
# advises WITHOUT ROWID only for rows much smaller than a page (measured: 4x slower upserts).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS telemetry (
    id TEXT NOT NULL, pk TEXT NOT NULL, app_id TEXT NOT NULL, ts REAL NOT NULL, doc BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_key ON telemetry (pk, id);
CREATE INDEX IF NOT EXISTS telemetry_app_ts ON telemetry (app_id, ts);
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT NOT NULL, pk TEXT NOT NULL, received REAL NOT NULL, doc BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS quarantine_key ON quarantine (pk, id);
CREATE TABLE IF NOT EXISTS state (
    consumer_group TEXT NOT NULL, partition TEXT NOT NULL, covered_sequence INTEGER NOT NULL,
    blob BLOB NOT NULL, PRIMARY KEY (consumer_group, partition)
);
"""

_UPSERT_TELEMETRY = (
    "INSERT INTO telemetry (id, pk, app_id, ts, doc) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (pk, id) DO UPDATE SET "
    "app_id = excluded.app_id, ts = excluded.ts, doc = excluded.doc"
)
_UPSERT_QUARANTINE = (
    "INSERT INTO quarantine (id, pk, received, doc) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (pk, id) DO UPDATE SET received = excluded.received, doc = excluded.doc"
)


class SqliteStore:
    """TelemetryStore on SQLite. Calls run inline: a batch upsert takes milliseconds, less
    than a thread hand-off would cost per batch at the processor's rates."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection = connect(path)
        self._connection.executescript(_SCHEMA)
        self._closed = False

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
        if not self._closed:
            self._closed = True
            self._connection.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> None:
        self._check_open()
        connection = self._connection
        connection.execute("BEGIN IMMEDIATE")
        try:
            if documents:
                connection.executemany(
                    _UPSERT_TELEMETRY,
                    [
                        (
                            doc.id,
                            doc.pk,
                            doc.app_id,
                            doc.timestamp.timestamp(),
                            doc.json_bytes(),
                        )
                        for doc in documents
                    ],
                )
            if quarantined:
                connection.executemany(
                    _UPSERT_QUARANTINE,
                    [
                        (rec.id, rec.pk, rec.received_at.timestamp(), rec.model_dump_json())
                        for rec in quarantined
                    ],
                )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None:
        self._check_open()
        row = self._connection.execute(
            "SELECT covered_sequence, blob FROM state WHERE consumer_group = ? AND partition = ?",
            (consumer_group, partition),
        ).fetchone()
        if row is None:
            return None
        return StateSnapshot(consumer_group, partition, int(row[0]), bytes(row[1]))

    async def save_state(self, snapshot: StateSnapshot) -> None:
        self._check_open()
        self._connection.execute(
            "INSERT INTO state (consumer_group, partition, covered_sequence, blob) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT (consumer_group, partition) DO UPDATE SET "
            "covered_sequence = excluded.covered_sequence, blob = excluded.blob",
            (snapshot.consumer_group, snapshot.partition, snapshot.covered_sequence, snapshot.blob),
        )

    async def get_telemetry(self, document_id: str, pk: str) -> TelemetryDocument | None:
        self._check_open()
        row = self._connection.execute(
            "SELECT doc FROM telemetry WHERE pk = ? AND id = ?", (pk, document_id)
        ).fetchone()
        return TelemetryDocument.model_validate_json(row[0]) if row else None

    async def count(self, kind: str) -> int:
        self._check_open()
        if kind not in ("telemetry", "quarantine"):
            raise StoreError(f"unknown record kind {kind!r}: expected telemetry or quarantine")
        return int(self._connection.execute(f"SELECT count(*) FROM {kind}").fetchone()[0])  # noqa: S608

    async def telemetry_ids(self) -> list[tuple[str, str]]:
        """Every (pk, id) stored; for verification tools and tests."""
        self._check_open()
        return [
            (row[0], row[1]) for row in self._connection.execute("SELECT pk, id FROM telemetry")
        ]

    async def telemetry_window(
        self, app_ids: Sequence[str], start: datetime, end: datetime, page_size: int = 1000
    ) -> AsyncIterator[list[TelemetryDocument]]:
        self._check_open()
        for app_id in app_ids:
            # Keyset paging on (ts, id): every id sorts after "", so the first page starts at
            # start inclusive.
            last_ts, last_id = start.timestamp(), ""
            while True:
                rows = self._connection.execute(
                    "SELECT ts, id, doc FROM telemetry WHERE app_id = ? AND ts < ? AND "
                    "(ts > ? OR (ts = ? AND id > ?)) ORDER BY ts, id LIMIT ?",
                    (app_id, end.timestamp(), last_ts, last_ts, last_id, page_size),
                ).fetchall()
                if not rows:
                    break
                last_ts, last_id = rows[-1][0], rows[-1][1]
                yield [TelemetryDocument.model_validate_json(row[2]) for row in rows]

    async def quarantine_records(self, limit: int = 100) -> AsyncIterator[QuarantineRecord]:
        self._check_open()
        for (doc,) in self._connection.execute(
            "SELECT doc FROM quarantine ORDER BY received DESC LIMIT ?", (limit,)
        ):
            yield QuarantineRecord.model_validate_json(doc)
