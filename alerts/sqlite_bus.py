"""The embedded alert topic: one SQLite file with subscriptions, their messages and dead letters.

It has the Service Bus semantics the rest of evalstream relies on: fan-out to every subscription
whose filter matches, duplicate detection by message id, peek-lock with lock expiry and
redelivery, abandon, dead-lettering with reason and description, ``MaxDeliveryCountExceeded``.
The publisher lives in the processor process and receivers in other processes, all on the same
file: WAL lets them read concurrently, each write is one short ``BEGIN IMMEDIATE`` transaction
and ``busy_timeout`` makes writers queue instead of failing.

The file is opened with the shared SQLite recipe (``common.sqlite``) and every call runs on its
worker thread: a writer may wait up to the busy timeout for another process, and that must not
stall the event loop of the processor. The tables and the SQL are in ``alerts.sqlite_bus_tables``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

from alerts import sqlite_bus_tables as tables
from alerts.config import SubscriptionSpec
from alerts.exceptions import (
    AlertBusBusyError,
    AlertBusError,
    AlertClientClosedError,
    AlertError,
    UnknownSubscriptionError,
)
from alerts.ports import DeadLetteredAlert, PublishedPosition, ReceivedAlert
from common.sqlite import SqliteFile, Synchronous, sqlite3, transaction
from schemas import Breach

logger = logging.getLogger(__name__)

DEFAULT_DUPLICATE_WINDOW_S = 7 * 24 * 3600.0
DEFAULT_BUSY_TIMEOUT_S = 10.0
DEFAULT_POLL_INTERVAL_S = 0.02
# Expired message ids are deleted at most this often; a live duplicate check never depends on it.
PURGE_INTERVAL_S = 60.0

_T = TypeVar("_T")


class _SqliteClient:
    """The bus file as a ``SqliteFile``, opened by ``async with`` and never reused after."""

    def __init__(
        self,
        path: Path | str,
        *,
        busy_timeout_s: float,
        synchronous: Synchronous,
        clock: Callable[[], float],
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.busy_timeout_s = busy_timeout_s
        self.synchronous = synchronous
        self.clock = clock
        self._file: SqliteFile | None = None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise AlertClientClosedError(f"{type(self).__name__} was closed; create a new one")
        if self._file is not None:
            raise AlertBusError(f"{type(self).__name__} is already open")
        # Opening may wait the busy timeout for the schema's write lock: off the event loop too.
        file = await asyncio.to_thread(self._open_file)
        try:
            await file.run(self._on_open, f"opening alert bus {self.path}")
        except BaseException:
            await file.aclose()
            raise
        self._file = file
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        file, self._file = self._file, None
        if file is not None:
            # Shielded inside: a cancelled caller must still release the file (and its WAL
            # read marks).
            await file.aclose()

    def _open_file(self) -> SqliteFile:
        return SqliteFile(
            self.path,
            error_type=AlertBusError,
            transient_type=AlertBusBusyError,
            schema=tables.SCHEMA,
            synchronous=self.synchronous,
            busy_timeout_s=self.busy_timeout_s,
            read_only=self.read_only,
        )

    def _on_open(self, connection: sqlite3.Connection) -> None:
        """Subclass hook, runs on the worker thread right after the schema exists."""

    async def _run(self, call: Callable[[sqlite3.Connection], _T], what: str) -> _T:
        if self._file is None:
            raise AlertClientClosedError(
                f"{type(self).__name__} is not open; use it inside 'async with'"
            )
        return await self._file.run(call, f"{what} ({self.path})")


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
        synchronous: Synchronous = "FULL",
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
            tables.upsert_subscriptions(connection, self.subscriptions, self.clock())

    async def publish(self, breaches: Sequence[Breach]) -> None:
        """Store every breach for every matching subscription in one transaction.

        Durable when it returns. A message id already published within the duplicate window
        is skipped (and logged at debug level), so repeating a failed or interrupted call is
        always safe.
        """
        await self._publish_async(breaches, None)

    async def publish_numbered(
        self, breaches: Sequence[Breach], partition: PublishedPosition
    ) -> None:
        """``publish``, and the partition's last breach recorded in the same transaction
        (``alerts.ports.NumberingPublisher``)."""
        await self._publish_async(breaches, partition)

    async def held_through(self, consumer_group: str, partition: str) -> PublishedPosition | None:
        return await self._run(
            lambda connection: tables.held(connection, consumer_group, partition),
            f"reading what the bus holds of partition {partition}",
        )

    async def _publish_async(
        self, breaches: Sequence[Breach], position: PublishedPosition | None
    ) -> None:
        if not breaches:
            if self._file is None:
                raise AlertClientClosedError("SqliteAlertPublisher is not open")
            return
        # Serialise before the worker thread: it is the only per-breach CPU work.
        items = [
            (b.message_id, b.model_dump_json().encode(), b.routing_properties) for b in breaches
        ]

        def publish(connection: sqlite3.Connection) -> tuple[int, int]:
            return self._publish(connection, items, position)

        published, duplicates = await self._run(publish, "publishing alerts")
        logger.debug("published alerts", extra={"published": published, "duplicates": duplicates})

    def _publish(
        self,
        connection: sqlite3.Connection,
        items: list[tuple[str, bytes, dict[str, str]]],
        position: PublishedPosition | None,
    ) -> tuple[int, int]:
        now = self.clock()
        expired_before = now - self.duplicate_window_s
        with transaction(connection):
            counts = tables.publish(
                connection, items, self._current_filters(connection), now, expired_before
            )
            if position is not None:
                tables.record_held(connection, position)
            if now >= self._next_purge:
                tables.purge_message_ids(connection, expired_before)
                self._next_purge = now + PURGE_INTERVAL_S
        return counts

    def _current_filters(self, connection: sqlite3.Connection) -> dict[str, dict[str, str]]:
        # Re-read every time (a few rows): another process may have added a subscription.
        rows = tables.filter_rows(connection)
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
        synchronous: Synchronous = "NORMAL",
        clock: Callable[[], float] = time.time,
        read_only: bool = False,
    ) -> None:
        """``read_only``: only to read (``dead_letters``): the subscription is not created
        or updated, and the bus's file and folder stay as they are."""
        super().__init__(
            path,
            busy_timeout_s=busy_timeout_s,
            synchronous=synchronous,
            clock=clock,
            read_only=read_only,
        )
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
        given = self.subscription
        if isinstance(given, SubscriptionSpec) and not self.read_only:
            tables.upsert_subscriptions(connection, [given], self.clock())
            return
        specs = {spec.name: spec for spec in tables.load_subscriptions(connection)}
        if isinstance(given, SubscriptionSpec):
            # Read only: as stored, or as configured when nothing made it yet (no messages).
            self._spec = specs.get(given.name, given)
            return
        if given not in specs:
            raise UnknownSubscriptionError(given, list(specs))
        self._spec = specs[given]

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
        spec = self.spec
        claim = asyncio.ensure_future(
            self._run(
                lambda connection: tables.claim(connection, spec, max_count, self.clock()),
                "receiving alerts",
            )
        )
        try:
            return await asyncio.shield(claim)
        except asyncio.CancelledError:
            try:
                claimed = await claim
                if claimed:
                    tokens = [alert.lock_token for alert in claimed]
                    await self._run(
                        lambda connection: tables.release(connection, tokens, self.clock()),
                        "handing back alerts",
                    )
            except AlertError as exc:
                # The locks then expire on their own; the alerts are redelivered later.
                logger.warning("could not hand back alerts claimed by a cancelled receive: %s", exc)
            raise

    async def complete(self, alert: ReceivedAlert) -> None:
        spec = self.spec
        await self._run(
            lambda connection: tables.complete(connection, spec, alert, self.clock()),
            f"completing alert {alert.message_id}",
        )

    async def abandon(self, alert: ReceivedAlert) -> None:
        spec = self.spec
        await self._run(
            lambda connection: tables.abandon(connection, spec, alert, self.clock()),
            f"abandoning alert {alert.message_id}",
        )

    async def dead_letter(self, alert: ReceivedAlert, reason: str, description: str) -> None:
        spec = self.spec
        await self._run(
            lambda connection: tables.dead_letter(
                connection, spec, alert, reason, description, self.clock()
            ),
            f"dead-lettering alert {alert.message_id}",
        )

    async def renew_lock(self, alert: ReceivedAlert) -> datetime:
        spec = self.spec
        return await self._run(
            lambda connection: tables.renew_lock(connection, spec, alert, self.clock()),
            f"renewing the lock of alert {alert.message_id}",
        )

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetteredAlert]:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        spec = self.spec
        return await self._run(
            lambda connection: tables.dead_letters(connection, spec, max_count),
            "reading dead letters",
        )
