"""The embedded store's breach journal: every breach the processor published, by partition and
number (``store.ports.BreachJournal``), in the store's file beside the snapshots that count them.

Plain functions of a ``sqlite3.Connection``, run by ``store.sqlite.SqliteStore`` on its file.
Rows are kept for good, as the telemetry is: a bus file put back from an older copy may lack
breaches of any age, and breaches are few (one per incident opened, escalated or resolved).
"""

from __future__ import annotations

from collections.abc import Sequence

from common.sqlite import sqlite3, transaction
from schemas import Breach
from store.ports import KeptBreach

SCHEMA = """
CREATE TABLE IF NOT EXISTS breaches (
    consumer_group TEXT NOT NULL, partition TEXT NOT NULL, number INTEGER NOT NULL,
    sequence INTEGER NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (consumer_group, partition, number)
);
"""


def keep(
    connection: sqlite3.Connection,
    consumer_group: str,
    partition: str,
    breaches: Sequence[KeptBreach],
) -> None:
    # A batch detected again after a restart numbers the same breaches the same way: the row
    # is replaced by itself.
    rows = [
        (consumer_group, partition, kept.number, kept.sequence, kept.breach.model_dump_json())
        for kept in breaches
    ]
    with transaction(connection):
        connection.executemany(
            "INSERT INTO breaches (consumer_group, partition, number, sequence, doc) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (consumer_group, partition, number) "
            "DO UPDATE SET sequence = excluded.sequence, doc = excluded.doc",
            rows,
        )


def kept(
    connection: sqlite3.Connection, consumer_group: str, partition: str, first: int, last: int
) -> list[KeptBreach]:
    rows = connection.execute(
        "SELECT number, sequence, doc FROM breaches WHERE consumer_group = ? AND partition = ? "
        "AND number BETWEEN ? AND ? ORDER BY number",
        (consumer_group, partition, first, last),
    ).fetchall()
    return [
        KeptBreach(int(number), int(sequence), Breach.model_validate_json(doc))
        for number, sequence, doc in rows
    ]
