"""The embedded alert topic: one SQLite file with subscriptions, their messages and dead letters.

It has the Service Bus semantics the rest of evalstream relies on: fan-out to every subscription
whose filter matches, duplicate detection by message id, peek-lock with lock expiry and
redelivery, abandon, dead-lettering with reason and description, ``MaxDeliveryCountExceeded``.
The publisher lives in the processor process and receivers in other processes, all on the same
file: WAL lets them read concurrently, each write is one short ``BEGIN IMMEDIATE`` transaction
and ``busy_timeout`` makes writers queue instead of failing.

Tables::

    subscriptions  name → filter (JSON), max_delivery_count, lock_duration_s
    message_ids    message_id → published_at       duplicate detection (a window, default 7 days)
    messages       one row per (subscription, message); visible_at is the enqueue time, or the
                   lock expiry while locked (lock_token set), or the abandon time
    dead_letters   one row per dead-lettered (subscription, message), with reason and description

Every SQLite call runs in a worker thread (``asyncio.to_thread``): a writer may wait up to the
busy timeout for another process, and that must not stall the event loop of the processor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

from pydantic import ValidationError

from alerts.exceptions import (
    AlertBusBusyError,
    AlertBusError,
    AlertClientClosedError,
    AlertError,
    LockLostError,
    UnknownSubscriptionError,
)
from alerts.ports import (
    INVALID_BODY,
    MAX_DELIVERY_COUNT_EXCEEDED,
    DeadLetteredAlert,
    ReceivedAlert,
    SubscriptionSpec,
)
from schemas import Breach

logger = logging.getLogger(__name__)

DEFAULT_DUPLICATE_WINDOW_S = 7 * 24 * 3600.0
DEFAULT_BUSY_TIMEOUT_S = 10.0
DEFAULT_POLL_INTERVAL_S = 0.02
# Expired message ids are deleted at most this often; a live duplicate check never depends on it.
PURGE_INTERVAL_S = 60.0
# Service Bus caps dead-letter reason and description at 4096 characters each.
MAX_REASON_CHARS = 4096

SynchronousMode = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_T = TypeVar("_T")

_SCHEMA = """
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
"""


def _utc(timestamp: float) -> datetime:
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


@contextmanager
def _write_transaction(connection: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a busy file makes us wait (busy_timeout)
    # at BEGIN rather than fail halfway through with a read lock that cannot be upgraded.
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite rolls back by itself on some errors (SQLITE_FULL, ...): then there is nothing
        # to roll back, and trying would hide the original error.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _upsert_subscriptions(
    connection: sqlite3.Connection, specs: Sequence[SubscriptionSpec], now: float
) -> None:
    connection.executemany(
        """
        INSERT INTO subscriptions (name, filter, max_delivery_count, lock_duration_s, updated_at)
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


def _load_subscriptions(connection: sqlite3.Connection) -> list[SubscriptionSpec]:
    rows = connection.execute(
        "SELECT name, filter, max_delivery_count, lock_duration_s FROM subscriptions ORDER BY name"
    ).fetchall()
    return [_spec_from_row(row) for row in rows]


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


class _SqliteClient:
    """One connection to the bus file, used from worker threads one call at a time."""

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float,
        synchronous: SynchronousMode,
        clock: Callable[[], float],
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self.clock = clock
        self._connection: sqlite3.Connection | None = None
        self._closed = False
        # The connection is shared by worker threads; SQLite connections are not re-entrant.
        self._lock = threading.Lock()

    async def __aenter__(self) -> Self:
        if self._closed:
            raise AlertClientClosedError(f"{type(self).__name__} was closed; create a new one")
        if self._connection is not None:
            raise AlertBusError(f"{type(self).__name__} is already open")
        await asyncio.to_thread(self._open)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        # Shielded: a cancelled caller must still release the file (and its WAL read marks).
        await asyncio.shield(asyncio.to_thread(self._close))

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise AlertBusError(f"cannot open alert bus {self.path}: {exc}") from exc
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
            with _write_transaction(connection):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        connection.execute(statement)
            self._connection = connection
            self._on_open(connection)
        except BaseException as exc:
            connection.close()
            self._connection = None
            if isinstance(exc, sqlite3.Error):
                raise self._mapped(exc) from exc
            raise

    def _on_open(self, connection: sqlite3.Connection) -> None:
        """Subclass hook, runs in the worker thread right after the schema exists."""

    def _close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    def _mapped(self, exc: sqlite3.Error) -> AlertBusError:
        name = getattr(exc, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return AlertBusBusyError(
                f"alert bus {self.path} stayed locked for more than {self.busy_timeout_s} s",
                retry_after=1.0,
            )
        return AlertBusError(f"alert bus {self.path}: {exc}")

    def _call(self, function: Callable[..., _T], *args: object) -> _T:
        with self._lock:
            if self._connection is None:
                raise AlertClientClosedError(
                    f"{type(self).__name__} is not open; use it inside 'async with'"
                )
            try:
                return function(self._connection, *args)
            except sqlite3.Error as exc:
                raise self._mapped(exc) from exc

    async def _run(self, function: Callable[..., _T], *args: object) -> _T:
        if self._connection is None:
            raise AlertClientClosedError(
                f"{type(self).__name__} is not open; use it inside 'async with'"
            )
        return await asyncio.to_thread(self._call, function, *args)


class SqliteAlertPublisher(_SqliteClient):
    """Publishes breaches to the embedded topic, fanning out to matching subscriptions.

    ``subscriptions`` are created or updated at open; subscriptions that other processes
    created (a listener started before the processor) receive messages as well, because every
    publish reads the subscription table inside its own transaction.
    """

    def __init__(
        self,
        path: Path | str,
        subscriptions: Sequence[SubscriptionSpec] = (),
        *,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        # FULL: a publish that returned survives power loss too, not only a process crash;
        # the processor checkpoints after publishing and must never run ahead of an alert.
        synchronous: SynchronousMode = "FULL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, clock=clock)
        if duplicate_window_s <= 0:
            raise ValueError(f"duplicate_window_s must be > 0, got {duplicate_window_s}")
        self.subscriptions = tuple(subscriptions)
        self.duplicate_window_s = duplicate_window_s
        self._next_purge = 0.0
        self._filters: dict[str, dict[str, str]] = {}
        self._filter_rows: tuple[tuple[str, str], ...] = ()

    def _on_open(self, connection: sqlite3.Connection) -> None:
        if self.subscriptions:
            with _write_transaction(connection):
                _upsert_subscriptions(connection, self.subscriptions, self.clock())

    async def publish(self, breaches: Sequence[Breach]) -> None:
        """Store every breach for every matching subscription in one transaction.

        Durable when it returns. A message id already published within the duplicate window
        is skipped (and logged at debug level), so repeating a failed or interrupted call is
        always safe.
        """
        if not breaches:
            if self._connection is None:
                raise AlertClientClosedError("SqliteAlertPublisher is not open")
            return
        # Serialise outside the connection lock: it is the only per-breach CPU work.
        items = [
            (b.message_id, b.model_dump_json().encode(), b.routing_properties) for b in breaches
        ]
        published, duplicates = await self._run(self._publish, items)
        logger.debug("published alerts", extra={"published": published, "duplicates": duplicates})

    def _publish(
        self,
        connection: sqlite3.Connection,
        items: list[tuple[str, bytes, dict[str, str]]],
    ) -> tuple[int, int]:
        now = self.clock()
        expired_before = now - self.duplicate_window_s
        published = duplicates = 0
        rows: list[tuple[str, str, bytes, float, float]] = []
        with _write_transaction(connection):
            filters = self._current_filters(connection)
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
            if now >= self._next_purge:
                connection.execute(
                    "DELETE FROM message_ids WHERE published_at < ?", (expired_before,)
                )
                self._next_purge = now + PURGE_INTERVAL_S
        return published, duplicates

    def _current_filters(self, connection: sqlite3.Connection) -> dict[str, dict[str, str]]:
        # Re-read every time (a few rows): another process may have added a subscription.
        rows = tuple(connection.execute("SELECT name, filter FROM subscriptions ORDER BY name"))
        if rows != self._filter_rows:
            self._filters = {name: json.loads(text) for name, text in rows}
            self._filter_rows = rows
        return self._filters


class SqliteAlertReceiver(_SqliteClient):
    """Receives from one subscription of the embedded topic with peek-lock.

    Given a ``SubscriptionSpec`` it creates or updates that subscription at open; given a
    name, the subscription must exist already (``UnknownSubscriptionError`` lists the known
    ones). Several receivers, in any processes, may share a subscription: each message is
    locked by one of them at a time.
    """

    def __init__(
        self,
        path: Path | str,
        subscription: SubscriptionSpec | str,
        *,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        # A lost settlement (power loss only) means one redelivery, which at-least-once allows.
        synchronous: SynchronousMode = "NORMAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(path, busy_timeout_s=busy_timeout_s, synchronous=synchronous, clock=clock)
        if poll_interval_s <= 0:
            raise ValueError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        self.poll_interval_s = poll_interval_s
        self.subscription = subscription
        self._spec: SubscriptionSpec | None = (
            subscription if isinstance(subscription, SubscriptionSpec) else None
        )

    @property
    def spec(self) -> SubscriptionSpec:
        """The subscription as stored in the bus (known once the receiver is open)."""
        if self._spec is None:
            raise AlertClientClosedError("SqliteAlertReceiver is not open")
        return self._spec

    def _on_open(self, connection: sqlite3.Connection) -> None:
        if isinstance(self.subscription, SubscriptionSpec):
            with _write_transaction(connection):
                _upsert_subscriptions(connection, [self.subscription], self.clock())
            return
        specs = {spec.name: spec for spec in _load_subscriptions(connection)}
        if self.subscription not in specs:
            raise UnknownSubscriptionError(self.subscription, list(specs))
        self._spec = specs[self.subscription]

    async def receive(self, max_count: int, max_wait_s: float) -> list[ReceivedAlert]:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(max_wait_s, 0.0)
        while True:
            alerts = await self._claim_shielded(max_count)
            if alerts:
                return alerts
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(self.poll_interval_s, remaining))

    async def _claim_shielded(self, max_count: int) -> list[ReceivedAlert]:
        # The worker thread cannot be interrupted: if our caller is cancelled meanwhile, let
        # the claim finish and hand its locks back, so the alerts are visible again at once
        # instead of after the lock duration.
        claim = asyncio.ensure_future(self._run(self._claim, max_count))
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            try:
                claimed = await claim
                if claimed:
                    await self._run(self._release, [alert.lock_token for alert in claimed])
            except AlertError as exc:
                # The locks then expire on their own; the alerts are redelivered later.
                logger.warning("could not hand back alerts claimed by a cancelled receive: %s", exc)
            raise

    def _claim(self, connection: sqlite3.Connection, max_count: int) -> list[ReceivedAlert]:
        spec = self.spec
        now = self.clock()
        # A plain read first: idle polling never takes the write lock from the publisher.
        ready = connection.execute(
            "SELECT 1 FROM messages WHERE subscription = ? AND visible_at <= ? LIMIT 1",
            (spec.name, now),
        ).fetchone()
        if ready is None:
            return []
        locked_until = now + spec.lock_duration_s
        alerts: list[ReceivedAlert] = []
        with _write_transaction(connection):
            rows = connection.execute(
                """
                SELECT seq, message_id, body, enqueued_at, delivery_count FROM messages
                WHERE subscription = ? AND visible_at <= ?
                ORDER BY visible_at, seq LIMIT ?
                """,
                (spec.name, now, max_count),
            ).fetchall()
            for seq, message_id, body, enqueued_at, delivery_count in rows:
                if delivery_count >= spec.max_delivery_count:
                    # Its last lock expired without settlement: the limit is reached.
                    _move_to_dead_letters(
                        connection,
                        seq,
                        MAX_DELIVERY_COUNT_EXCEEDED,
                        f"not settled after {delivery_count} deliveries "
                        f"(max_delivery_count {spec.max_delivery_count})",
                        now,
                    )
                    continue
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
                        enqueued_time=_utc(enqueued_at),
                        locked_until=_utc(locked_until),
                    )
                )
        return alerts

    def _release(self, connection: sqlite3.Connection, lock_tokens: list[str]) -> None:
        # Undo a claim nobody saw: the delivery did not happen, so the count goes back too.
        with _write_transaction(connection):
            connection.executemany(
                """
                UPDATE messages SET lock_token = NULL, visible_at = ?,
                    delivery_count = delivery_count - 1
                WHERE lock_token = ?
                """,
                [(self.clock(), token) for token in lock_tokens],
            )

    def _locked_row(
        self, connection: sqlite3.Connection, alert: ReceivedAlert, now: float
    ) -> tuple[int, int]:
        row = connection.execute(
            "SELECT seq, delivery_count FROM messages WHERE lock_token = ? AND visible_at > ?",
            (alert.lock_token, now),
        ).fetchone()
        if row is None:
            raise LockLostError(
                f"the lock on alert {alert.message_id} in subscription {self.spec.name!r} "
                "expired or the alert was settled already"
            )
        return int(row[0]), int(row[1])

    async def complete(self, alert: ReceivedAlert) -> None:
        await self._run(self._complete, alert)

    def _complete(self, connection: sqlite3.Connection, alert: ReceivedAlert) -> None:
        with _write_transaction(connection):
            seq, _ = self._locked_row(connection, alert, self.clock())
            connection.execute("DELETE FROM messages WHERE seq = ?", (seq,))

    async def abandon(self, alert: ReceivedAlert) -> None:
        await self._run(self._abandon, alert)

    def _abandon(self, connection: sqlite3.Connection, alert: ReceivedAlert) -> None:
        now = self.clock()
        spec = self.spec
        with _write_transaction(connection):
            seq, delivery_count = self._locked_row(connection, alert, now)
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
                "UPDATE messages SET lock_token = NULL, visible_at = ? WHERE seq = ?",
                (now, seq),
            )

    async def dead_letter(self, alert: ReceivedAlert, reason: str, description: str) -> None:
        await self._run(self._dead_letter, alert, reason, description)

    def _dead_letter(
        self, connection: sqlite3.Connection, alert: ReceivedAlert, reason: str, description: str
    ) -> None:
        now = self.clock()
        with _write_transaction(connection):
            seq, _ = self._locked_row(connection, alert, now)
            _move_to_dead_letters(connection, seq, reason, description, now)

    async def renew_lock(self, alert: ReceivedAlert) -> datetime:
        return await self._run(self._renew_lock, alert)

    def _renew_lock(self, connection: sqlite3.Connection, alert: ReceivedAlert) -> datetime:
        now = self.clock()
        locked_until = now + self.spec.lock_duration_s
        with _write_transaction(connection):
            seq, _ = self._locked_row(connection, alert, now)
            connection.execute(
                "UPDATE messages SET visible_at = ? WHERE seq = ?", (locked_until, seq)
            )
        return _utc(locked_until)

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetteredAlert]:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        return await self._run(self._dead_letters, max_count)

    def _dead_letters(
        self, connection: sqlite3.Connection, max_count: int
    ) -> list[DeadLetteredAlert]:
        rows = connection.execute(
            """
            SELECT message_id, body, reason, description, delivery_count, dead_lettered_at
            FROM dead_letters WHERE subscription = ? ORDER BY seq LIMIT ?
            """,
            (self.spec.name, max_count),
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
                    dead_lettered_at=_utc(dead_lettered_at),
                    # Only an unreadable body is returned raw; a readable one is in ``breach``.
                    raw=None if breach is not None else bytes(body),
                )
            )
        return result
