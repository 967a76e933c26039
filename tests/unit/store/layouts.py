"""Store files as an earlier version made them, and what a file's telemetry indexes are."""

from __future__ import annotations

from pathlib import Path

from common.sqlite import sqlite3

# The telemetry table and key of files made before the key was led by the time.
EARLIER_TELEMETRY = """
CREATE TABLE telemetry (
    id TEXT NOT NULL, pk TEXT NOT NULL, app_id TEXT NOT NULL, ts REAL NOT NULL, doc BLOB NOT NULL
);
CREATE UNIQUE INDEX telemetry_key ON telemetry (pk, id);
CREATE INDEX telemetry_app_ts ON telemetry (app_id, ts);
"""
EARLIER_INDEXES = {"telemetry_key", "telemetry_app_ts"}
TIME_LED_INDEXES = {"telemetry_time_key", "telemetry_named_key"}


def earlier_file(path: Path) -> None:
    """A store file whose telemetry table an earlier version made (the store adds the rest)."""
    connection = sqlite3.connect(path)
    try:
        connection.executescript(EARLIER_TELEMETRY)
    finally:
        connection.close()


def telemetry_indexes(path: Path) -> set[str]:
    connection = sqlite3.connect(path)
    try:
        return {row[1] for row in connection.execute("PRAGMA index_list(telemetry)")}
    finally:
        connection.close()
