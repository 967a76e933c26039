"""Ports of the alert bus: what the processor publishes through and subscribers receive from.

The embedded SQLite topic (``alerts.sqlite_bus``) and the Service Bus adapter implement the same
Protocols, so the listener, the handlers and the CLI never know which bus they talk to. No I/O here.
The subscription model (``SubscriptionSpec``) is configuration and lives in ``alerts.config``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from schemas import Breach

# Service Bus's own name for the reason, kept so dead-letter queues read alike on both backends.
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"
# The message body is not a valid Breach (written by something else, or a contract mismatch).
INVALID_BODY = "InvalidBody"


@dataclass(frozen=True)
class ReceivedAlert:
    """A breach under a peek-lock: settle it with the receiver before ``locked_until``."""

    breach: Breach
    message_id: str
    delivery_count: int
    lock_token: str
    enqueued_time: datetime
    locked_until: datetime


@dataclass(frozen=True)
class DeadLetteredAlert:
    """A message in a subscription's dead-letter queue.

    ``breach`` is None when the body could not be read as a Breach; ``raw`` then holds it.
    """

    breach: Breach | None
    message_id: str
    reason: str
    description: str
    delivery_count: int
    dead_lettered_at: datetime
    raw: bytes | None


class AlertPublisher(Protocol):
    """Publishes breaches to the topic. An async context manager; reuse after close raises."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def publish(self, breaches: Sequence[Breach]) -> None:
        """Durable when it returns. Idempotent by ``Breach.message_id``.

        A second publish of the same message id within the duplicate-detection window is
        recognised as a duplicate and not delivered again. Raises an ``AlertError``; when its
        ``retryable`` is true the whole call may be repeated safely.
        """
        ...


@runtime_checkable
class NumberingPublisher(Protocol):
    """A publisher whose topic can lose its last commits (the embedded SQLite file: its WAL cut,
    an older copy put back) and therefore records what it holds of each processor partition.

    The processor numbers the breaches of a partition 0, 1, 2, ... (the numbers are as
    deterministic as the breaches) and keeps the count in its snapshot, saved after the
    publish. The topic records the highest number it took for the partition in the same
    transaction as the breaches, so at start the processor compares the two: a topic behind
    the snapshot lost breaches (``stream.pipeline``). Service Bus does not lose what it
    acknowledged and keeps no such record: its publisher is a plain ``AlertPublisher``.
    """

    async def publish_numbered(
        self, breaches: Sequence[Breach], partition: PublishedPosition
    ) -> None:
        """``AlertPublisher.publish``, recording ``partition`` (the number and event sequence
        of the last of ``breaches``) in the same transaction. A record never moves back."""
        ...

    async def held_through(self, consumer_group: str, partition: str) -> PublishedPosition | None:
        """The partition's highest recorded position (None: no breach of it recorded)."""
        ...


@dataclass(frozen=True)
class PublishedPosition:
    """The last breach a topic holds of a processor partition: its number among the
    partition's breaches and the sequence of the event that raised it."""

    consumer_group: str
    partition: str
    number: int
    sequence: int


class AlertReceiver(Protocol):
    """Receives from one subscription with peek-lock. An async context manager."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def receive(self, max_count: int, max_wait_s: float) -> list[ReceivedAlert]:
        """Lock and return up to ``max_count`` alerts; wait up to ``max_wait_s`` for the first.

        Returns an empty list when nothing arrived in time. Each returned alert's delivery
        count already includes this delivery (the first delivery is 1).
        """
        ...

    async def complete(self, alert: ReceivedAlert) -> None:
        """Remove the alert for good. Raises ``LockLostError`` when its lock expired."""
        ...

    async def abandon(self, alert: ReceivedAlert) -> None:
        """Release the lock now so the alert is redelivered (or dead-lettered at the limit)."""
        ...

    async def dead_letter(self, alert: ReceivedAlert, reason: str, description: str) -> None:
        """Move the alert to the dead-letter queue with a reason and description."""
        ...

    async def renew_lock(self, alert: ReceivedAlert) -> datetime:
        """Extend the lock by the subscription's lock duration; return the new expiry."""
        ...

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetteredAlert]:
        """Peek at the dead-letter queue, oldest first, without removing anything."""
        ...


class AlertHandler(Protocol):
    """What a subscriber does with each alert (print it, forward it to a webhook, ...).

    Called by ``alerts.listener.AlertListener`` while the alert's lock is held (and renewed).
    Returning means handled: the alert is completed. Raising means not handled: the alert is
    abandoned and redelivered later, and dead-lettered with the error once it has reached the
    subscription's max delivery count. A handler may therefore see the same alert more than
    once; ``alert.message_id`` is stable across deliveries for idempotent destinations.
    """

    async def handle(self, alert: ReceivedAlert) -> None: ...
