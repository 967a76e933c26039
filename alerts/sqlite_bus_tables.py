"""The embedded alert topic's tables and every operation on them, as plain functions of a
``sqlite3.Connection`` (run on the bus file's worker thread by ``alerts.sqlite_bus``).

Tables::

    subscriptions  name → filter (JSON), max_delivery_count, lock_duration_s
    message_ids    message_id → published_at       duplicate detection (a window, default 7 days)
    messages       one row per (subscription, message); visible_at is the enqueue time, or the
                   lock expiry while locked (lock_token set), or the abandon time
    dead_letters   one row per dead-lettered (subscription, message), with reason and description
    held           (consumer group, partition) → the number and event sequence of the last of its
                   breaches published: what the processor compares with its snapshot at start
                   (alerts.ports.NumberingPublisher); kept for good, unlike message ids

Each write is one ``BEGIN IMMEDIATE`` transaction (``common.sqlite.transaction``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from alerts.config import SubscriptionSpec
from alerts.exceptions import LockLostError
from alerts.ports import (
    INVALID_BODY,
    MAX_DELIVERY_COUNT_EXCEEDED,
    DeadLetteredAlert,
    PublishedPosition,
    ReceivedAlert,
)
from common.sqlite import sqlite3, transaction
from schemas import Breach

# Service Bus caps dead-letter reason and description at 4096 characters each.
MAX_REASON_CHARS = 4096

# In one transaction: processes opening the file at once see all of it or none.
SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS subscriptions (
    name TEXT PRIMARY KEY,
    filter TEXT NOT NULL,
    max_delivery_count INTEGER NOT NULL,
    lock_duration_s REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS message_ids (
    message_id TEXT PRIMARY KEY,
    published_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS message_ids_by_time ON message_ids (published_at);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY,
    subscription TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    visible_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token TEXT
);
CREATE INDEX IF NOT EXISTS messages_visible ON messages (subscription, visible_at, seq);
CREATE UNIQUE INDEX IF NOT EXISTS messages_lock ON messages (lock_token)
    WHERE lock_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    subscription TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    enqueued_at REAL NOT NULL,
    delivery_count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    description TEXT NOT NULL,
    dead_lettered_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_subscription ON dead_letters (subscription, seq);
CREATE TABLE IF NOT EXISTS held (
    consumer_group TEXT NOT NULL,
    partition TEXT NOT NULL,
    number INTEGER NOT NULL,
    sequence INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, partition)
);
COMMIT;
"""


def utc(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


def _filter_json(filter_: Mapping[str, str]) -> str:
    return json.dumps(dict(filter_), sort_keys=True, separators=(",", ":"))


def _spec_from_row(row: tuple[str, str, int, float]) -> SubscriptionSpec:
    name, filter_text, max_delivery_count, lock_duration_s = row
    return SubscriptionSpec(
        name=name,
        filter=json.loads(filter_text),
        max_delivery_count=max_delivery_count,
        lock_duration_s=lock_duration_s,
    )


# -- subscriptions ---------------------------------------------------------------------------


def upsert_subscriptions(
    connection: sqlite3.Connection, specs: Sequence[SubscriptionSpec], now: float
) -> None:
    with transaction(connection):
        connection.executemany(
            """
            INSERT INTO subscriptions (name, filter, max_delivery_count, lock_duration_s,
                                       updated_at)
            VALUES (?, ?, ?, ?, ?)
            ON CONFLICT (name) DO UPDATE SET
                filter = excluded.filter,
                max_delivery_count = excluded.max_delivery_count,
                lock_duration_s = excluded.lock_duration_s,
                updated_at = excluded.updated_at
            WHERE filter != excluded.filter
                OR max_delivery_count != excluded.max_delivery_count
                OR lock_duration_s != excluded.lock_duration_s
            """,
            [
                (s.name, _filter_json(s.filter), s.max_delivery_count, s.lock_duration_s, now)
                for s in specs
            ],
        )


def load_subscriptions(connection: sqlite3.Connection) -> list[SubscriptionSpec]:
    rows = connection.execute(
        "SELECT name, filter, max_delivery_count, lock_duration_s FROM subscriptions ORDER BY name"
    ).fetchall()
    return [_spec_from_row(row) for row in rows]


def filter_rows(connection: sqlite3.Connection) -> tuple[tuple[str, str], ...]:
    """(name, filter JSON) of every subscription, by name."""
    return tuple(connection.execute("SELECT name, filter FROM subscriptions ORDER BY name"))


# -- publishing ------------------------------------------------------------------------------


def publish(
    connection: sqlite3.Connection,
    items: Sequence[tuple[str, bytes, dict[str, str]]],
    filters: Mapping[str, Mapping[str, str]],
    now: float,
    expired_before: float,
) -> tuple[int, int]:
    """Store each (message id, body, routing properties) for every subscription whose filter
    matches, skipping message ids published after ``expired_before``; (published, duplicates).
    Call inside a transaction that also read ``filters``."""
    published = duplicates = 0
    rows: list[tuple[str, str, bytes, float, float]] = []
    for message_id, body, properties in items:
        # Inserted, or an expired entry taken over: rowcount 1. A live duplicate: 0.
        cursor = connection.execute(
            """
            INSERT INTO message_ids (message_id, published_at) VALUES (?, ?)
            ON CONFLICT (message_id) DO UPDATE SET published_at = excluded.published_at
            WHERE published_at < ?
            """,
            (message_id, now, expired_before),
        )
        if cursor.rowcount == 0:
            duplicates += 1
            continue
        published += 1
        for name, filter_ in filters.items():
            if all(properties.get(key) == value for key, value in filter_.items()):
                rows.append((name, message_id, body, now, now))
    connection.executemany(
        """
        INSERT INTO messages (subscription, message_id, body, enqueued_at, visible_at)
        VALUES (?, ?, ?, ?, ?)
        """,
        rows,
    )
    return published, duplicates


def record_held(connection: sqlite3.Connection, position: PublishedPosition) -> None:
    """Record the partition's last published breach, never moving back (an older batch of an
    owner that lost the partition, published late). Call inside the publish's transaction."""
    connection.execute(
        """
        INSERT INTO held (consumer_group, partition, number, sequence) VALUES (?, ?, ?, ?)
        ON CONFLICT (consumer_group, partition) DO UPDATE SET
            number = excluded.number, sequence = excluded.sequence
        WHERE excluded.number > held.number
        """,
        (position.consumer_group, position.partition, position.number, position.sequence),
    )


def held(
    connection: sqlite3.Connection, consumer_group: str, partition: str
) -> PublishedPosition | None:
    row = connection.execute(
        "SELECT number, sequence FROM held WHERE consumer_group = ? AND partition = ?",
        (consumer_group, partition),
    ).fetchone()
    if row is None:
        return None
    return PublishedPosition(consumer_group, partition, int(row[0]), int(row[1]))


def purge_message_ids(connection: sqlite3.Connection, expired_before: float) -> None:
    connection.execute("DELETE FROM message_ids WHERE published_at < ?", (expired_before,))


# -- receiving and settling ------------------------------------------------------------------


def _move_to_dead_letters(
    connection: sqlite3.Connection, seq: int, reason: str, description: str, now: float
) -> None:
    connection.execute(
        """
        INSERT INTO dead_letters (subscription, message_id, body, enqueued_at, delivery_count,
                                  reason, description, dead_lettered_at)
        SELECT subscription, message_id, body, enqueued_at, delivery_count, ?, ?, ?
        FROM messages WHERE seq = ?
        """,
        (reason[:MAX_REASON_CHARS], description[:MAX_REASON_CHARS], now, seq),
    )
    connection.execute("DELETE FROM messages WHERE seq = ?", (seq,))


def claim(
    connection: sqlite3.Connection, spec: SubscriptionSpec, max_count: int, now: float
) -> list[ReceivedAlert]:
    """Lock up to ``max_count`` visible messages of the subscription; dead-letter on the way
    those past their max delivery count and those whose body is not a Breach."""
    # A plain read first: idle polling never takes the write lock from the publisher.
    ready = connection.execute(
        "SELECT 1 FROM messages WHERE subscription = ? AND visible_at <= ? LIMIT 1",
        (spec.name, now),
    ).fetchone()
    if ready is None:
        return []
    locked_until = now + spec.lock_duration_s
    alerts: list[ReceivedAlert] = []
    with transaction(connection):
        # Every visible message whose last lock expired at the limit goes first, so that none
        # of them takes the place of a deliverable one in this receive.
        for seq, delivery_count in connection.execute(
            """
            SELECT seq, delivery_count FROM messages
            WHERE subscription = ? AND visible_at <= ? AND delivery_count >= ?
            """,
            (spec.name, now, spec.max_delivery_count),
        ).fetchall():
            _move_to_dead_letters(
                connection,
                seq,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"not settled after {delivery_count} deliveries "
                f"(max_delivery_count {spec.max_delivery_count})",
                now,
            )
        while len(alerts) < max_count and not _lock_some(
            connection, spec, max_count - len(alerts), now, locked_until, alerts
        ):
            pass
    return alerts


def _lock_some(
    connection: sqlite3.Connection,
    spec: SubscriptionSpec,
    count: int,
    now: float,
    locked_until: float,
    alerts: list[ReceivedAlert],
) -> bool:
    """Lock up to ``count`` more messages into ``alerts``; True when none is left to try
    (a body that is not a Breach is dead-lettered and the next message tried instead)."""
    rows = connection.execute(
        """
        SELECT seq, message_id, body, enqueued_at, delivery_count FROM messages
        WHERE subscription = ? AND visible_at <= ?
        ORDER BY visible_at, seq LIMIT ?
        """,
        (spec.name, now, count),
    ).fetchall()
    if not rows:
        return True
    for seq, message_id, body, enqueued_at, delivery_count in rows:
        try:
            breach = Breach.model_validate_json(body)
        except ValidationError as exc:
            _move_to_dead_letters(connection, seq, INVALID_BODY, str(exc), now)
            continue
        lock_token = str(uuid.uuid4())
        connection.execute(
            """
            UPDATE messages SET delivery_count = ?, lock_token = ?, visible_at = ?
            WHERE seq = ?
            """,
            (delivery_count + 1, lock_token, locked_until, seq),
        )
        alerts.append(
            ReceivedAlert(
                breach=breach,
                message_id=message_id,
                delivery_count=delivery_count + 1,
                lock_token=lock_token,
                enqueued_time=utc(enqueued_at),
                locked_until=utc(locked_until),
            )
        )
    return False


def release(connection: sqlite3.Connection, lock_tokens: Sequence[str], now: float) -> None:
    """Undo a claim nobody saw: the delivery did not happen, so the count goes back too."""
    with transaction(connection):
        connection.executemany(
            """
            UPDATE messages SET lock_token = NULL, visible_at = ?,
                delivery_count = delivery_count - 1
            WHERE lock_token = ?
            """,
            [(now, token) for token in lock_tokens],
        )


def _locked_row(
    connection: sqlite3.Connection, spec: SubscriptionSpec, alert: ReceivedAlert, now: float
) -> tuple[int, int]:
    row = connection.execute(
        "SELECT seq, delivery_count FROM messages WHERE lock_token = ? AND visible_at > ?",
        (alert.lock_token, now),
    ).fetchone()
    if row is None:
        raise LockLostError(
            f"the lock on alert {alert.message_id} in subscription {spec.name!r} "
            "expired or the alert was settled already"
        )
    return int(row[0]), int(row[1])


def complete(
    connection: sqlite3.Connection, spec: SubscriptionSpec, alert: ReceivedAlert, now: float
) -> None:
    with transaction(connection):
        seq, _ = _locked_row(connection, spec, alert, now)
        connection.execute("DELETE FROM messages WHERE seq = ?", (seq,))


def abandon(
    connection: sqlite3.Connection, spec: SubscriptionSpec, alert: ReceivedAlert, now: float
) -> None:
    with transaction(connection):
        seq, delivery_count = _locked_row(connection, spec, alert, now)
        if delivery_count >= spec.max_delivery_count:
            _move_to_dead_letters(
                connection,
                seq,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"abandoned after {delivery_count} deliveries "
                f"(max_delivery_count {spec.max_delivery_count})",
                now,
            )
            return
        connection.execute(
            "UPDATE messages SET lock_token = NULL, visible_at = ? WHERE seq = ?", (now, seq)
        )


def dead_letter(
    connection: sqlite3.Connection,
    spec: SubscriptionSpec,
    alert: ReceivedAlert,
    reason: str,
    description: str,
    now: float,
) -> None:
    with transaction(connection):
        seq, _ = _locked_row(connection, spec, alert, now)
        _move_to_dead_letters(connection, seq, reason, description, now)


def renew_lock(
    connection: sqlite3.Connection, spec: SubscriptionSpec, alert: ReceivedAlert, now: float
) -> datetime:
    locked_until = now + spec.lock_duration_s
    with transaction(connection):
        seq, _ = _locked_row(connection, spec, alert, now)
        connection.execute("UPDATE messages SET visible_at = ? WHERE seq = ?", (locked_until, seq))
    return utc(locked_until)


def dead_letters(
    connection: sqlite3.Connection, spec: SubscriptionSpec, max_count: int
) -> list[DeadLetteredAlert]:
    rows = connection.execute(
        """
        SELECT message_id, body, reason, description, delivery_count, dead_lettered_at
        FROM dead_letters WHERE subscription = ? ORDER BY seq LIMIT ?
        """,
        (spec.name, max_count),
    ).fetchall()
    result = []
    for message_id, body, reason, description, delivery_count, dead_lettered_at in rows:
        try:
            breach: Breach | None = Breach.model_validate_json(body)
        except ValidationError:
            breach = None
        result.append(
            DeadLetteredAlert(
                breach=breach,
                message_id=message_id,
                reason=reason,
                description=description,
                delivery_count=delivery_count,
                dead_lettered_at=utc(dead_lettered_at),
                # Only an unreadable body is returned raw; a readable one is in ``breach``.
                raw=None if breach is not None else bytes(body),
            )
        )
    return result
