"""The embedded evaluation store: results, shard progress and manifests beside the telemetry.

Tables ``evaluations``, ``shard_progress`` and ``manifests`` live in the store's SQLite file
(the telemetry store's), opened through the shared SQLite recipe. Every write is one
transaction, durable across kill -9 when it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType

from common.sqlite import SqliteFile, sqlite3, transaction
from schemas import EvaluationResult, JobManifest, ShardProgress
from store.exceptions import StoreError, StoreUnavailable
from store.sqlite import apps_between

_SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluations (
    id TEXT NOT NULL, pk TEXT NOT NULL, app_id TEXT NOT NULL, policy TEXT NOT NULL,
    window_start REAL NOT NULL, doc BLOB NOT NULL, PRIMARY KEY (pk, id)
);
CREATE INDEX IF NOT EXISTS evaluations_app ON evaluations (app_id, policy, window_start);
CREATE INDEX IF NOT EXISTS evaluations_window ON evaluations (window_start);
CREATE TABLE IF NOT EXISTS shard_progress (
    manifest_id TEXT NOT NULL, unit TEXT NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (manifest_id, unit)
);
CREATE TABLE IF NOT EXISTS manifests (id TEXT PRIMARY KEY, doc BLOB NOT NULL);
"""

_UPSERT = (
    "INSERT INTO evaluations (id, pk, app_id, policy, window_start, doc) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (pk, id) DO UPDATE SET doc = excluded.doc"
)


class SqliteEvaluationStore:
    """EvaluationStore on SQLite (WAL): several shard processes may write at once."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """``read_only``: an existing file, only read (evaluations, coldpath status, report)."""
        self.path = path
        self._file = SqliteFile(
            path,
            error_type=StoreError,
            transient_type=StoreUnavailable,
            schema=_SCHEMA,
            read_only=read_only,
        )

    async def __aenter__(self) -> SqliteEvaluationStore:
        if self._file.closed:
            raise StoreError(f"evaluation store {self.path} is closed")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._file.aclose()

    async def upsert_results(self, results: Sequence[EvaluationResult]) -> None:
        rows = [
            (
                result.id,
                result.pk,
                result.app_id,
                result.policy,
                result.window.start.timestamp(),
                result.model_dump_json().encode(),
            )
            for result in results
        ]

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.executemany(_UPSERT, rows)

        await self._file.run(write, "upsert evaluation results")

    async def results(
        self,
        app_id: str | None = None,
        policy: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[EvaluationResult]:
        clauses: list[str] = []
        parameters: list[str | float] = []
        if app_id is not None:
            clauses.append("app_id = ?")
            parameters.append(app_id)
        if policy is not None:
            clauses.append("policy = ?")
            parameters.append(policy)
        if since is not None:
            clauses.append("window_start >= ?")
            parameters.append(since.timestamp())
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        # Only fixed clause texts are joined; every value is a bound parameter.
        query = (
            f"SELECT doc FROM evaluations {where} "  # noqa: S608
            "ORDER BY window_start DESC, app_id, policy, id LIMIT ?"
        )

        def read(connection: sqlite3.Connection) -> list[bytes]:
            return [row[0] for row in connection.execute(query, (*parameters, limit))]

        docs = await self._file.run(read, "read evaluation results")
        return [EvaluationResult.model_validate_json(doc) for doc in docs]

    async def done_units(self, manifest_id: str) -> set[str]:
        def read(connection: sqlite3.Connection) -> set[str]:
            rows = connection.execute(
                "SELECT unit FROM shard_progress WHERE manifest_id = ?", (manifest_id,)
            )
            return {row[0] for row in rows}

        return await self._file.run(read, "read shard progress")

    async def mark_done(self, progress: ShardProgress) -> None:
        row = (progress.manifest_id, progress.unit.key, progress.model_dump_json().encode())

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                connection.execute(
                    "INSERT OR REPLACE INTO shard_progress (manifest_id, unit, doc) "
                    "VALUES (?, ?, ?)",
                    row,
                )

        await self._file.run(write, "mark unit done")

    async def stage_manifest(self, manifest: JobManifest) -> None:
        row = (manifest.id, manifest.model_dump_json().encode())

        def write(connection: sqlite3.Connection) -> None:
            with transaction(connection):
                # The first staging wins: the same id is the same content by construction.
                connection.execute("INSERT OR IGNORE INTO manifests (id, doc) VALUES (?, ?)", row)

        await self._file.run(write, "stage manifest")

    async def load_manifest(self, manifest_id: str) -> JobManifest | None:
        def read(connection: sqlite3.Connection) -> bytes | None:
            row = connection.execute(
                "SELECT doc FROM manifests WHERE id = ?", (manifest_id,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        doc = await self._file.run(read, "load manifest")
        return None if doc is None else JobManifest.model_validate_json(doc)

    async def app_ids(self, start: datetime, end: datetime) -> list[str]:
        # The telemetry store's tables and keys are its own (store.sqlite); before it first
        # opens the file there is no table, and no app.
        return await self._file.run(
            lambda connection: apps_between(connection, start, end), "list apps in window"
        )
