"""One Service Bus message store (a queue, a subscription or a dead-letter queue) of the test
broker: available messages in sequence order, peek-lock, settlement, deferral, lock expiry and
duplicate detection. The delivery-count conventions are in `servicebus_model`'s docstring."""

from __future__ import annotations

import copy
import heapq
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .servicebus_errors import InvalidOperation, MessageLockLost, MessageNotFound

logger = logging.getLogger(__name__)

MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

DEFAULT_MAX_DELIVERY_COUNT = 10
DEFAULT_LOCK_DURATION_S = 30.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0

Clock = Callable[[], float]


@dataclass
class StoredMessage:
    """One message as an entity holds it.

    `payload` is opaque to the model: the wire layer keeps whatever it needs to re-encode
    the message there. The other fields are what filters, locks and the broker-set
    annotations need.
    """

    payload: Any = None
    message_id: str | None = None
    correlation_id: str | None = None
    subject: str | None = None
    content_type: str | None = None
    to: str | None = None
    reply_to: str | None = None
    session_id: str | None = None
    application_properties: dict[str, Any] = field(default_factory=dict)
    sequence_number: int = 0
    enqueued_time: float = 0.0
    delivery_count: int = 0
    dead_letter_reason: str | None = None
    dead_letter_description: str | None = None
    dead_letter_source: str | None = None
    deferred: bool = False

    def clone(self) -> StoredMessage:
        # Subscriptions each get their own copy: counts and state must not leak between them.
        twin = copy.copy(self)
        twin.application_properties = dict(self.application_properties)
        return twin


@dataclass(frozen=True)
class Delivery:
    """What a receive hands out: a snapshot of the message as delivered, plus the lock."""

    message: StoredMessage
    lock_token: uuid.UUID | None
    locked_until: float | None


@dataclass
class _Lock:
    message: StoredMessage
    locked_until: float


class DuplicateDetector:
    """Remembers message ids for `window_s` seconds; a repeat within the window is dropped."""

    def __init__(self, window_s: float, clock: Clock) -> None:
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, float] = {}
        self._expiries: list[tuple[float, str]] = []

    def is_duplicate(self, message_id: str | None) -> bool:
        """Record `message_id` and say whether it was already seen within the window."""
        if message_id is None:
            return False
        now = self.clock()
        self._forget_before(now)
        if message_id in self._seen:
            return True
        expires = now + self.window_s
        self._seen[message_id] = expires
        heapq.heappush(self._expiries, (expires, message_id))
        return False

    def _forget_before(self, now: float) -> None:
        while self._expiries and self._expiries[0][0] <= now:
            expires, message_id = heapq.heappop(self._expiries)
            if self._seen.get(message_id) == expires:
                del self._seen[message_id]


class MessageStore:
    """One receivable entity: a queue, a subscription, or the dead-letter queue of either.

    Messages are available, locked (peek-lock, by lock token) or deferred. Listeners added
    with `add_listener` are called whenever messages become available again, so the wire
    layer can push them to waiting receivers.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock,
        max_delivery_count: int | None = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
        dead_letter: MessageStore | None = None,
    ) -> None:
        self.path = path
        self.clock = clock
        self.max_delivery_count = max_delivery_count
        self.lock_duration_s = lock_duration_s
        self.dead_letter = dead_letter
        self._available: dict[int, StoredMessage] = {}
        self._order: list[int] = []  # heap of sequence numbers, lazily pruned
        self._locked: dict[uuid.UUID, _Lock] = {}
        # (locked_until, token) per lock taken or renewed; stale entries are skipped lazily,
        # so expiry and "next expiry" stay cheap with thousands of messages locked.
        self._expiries: list[tuple[float, uuid.UUID]] = []
        self._deferred: dict[int, StoredMessage] = {}
        self._deferred_locks: dict[int, uuid.UUID] = {}
        self._listeners: list[Callable[[MessageStore], None]] = []

    # ----------------------------------------------------------------- observation
    def add_listener(self, listener: Callable[[MessageStore], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[MessageStore], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener(self)

    @property
    def active_count(self) -> int:
        """Messages waiting to be received (not locked, not deferred)."""
        self.expire_locks()
        return len(self._available)

    @property
    def locked_count(self) -> int:
        self.expire_locks()
        return len(self._locked)

    @property
    def deferred_count(self) -> int:
        return len(self._deferred)

    def counts(self) -> dict[str, int]:
        self.expire_locks()
        return {
            "active": len(self._available),
            "locked": len(self._locked),
            "deferred": len(self._deferred),
            "dead_lettered": self.dead_letter.total_count() if self.dead_letter else 0,
        }

    def total_count(self) -> int:
        self.expire_locks()
        return len(self._available) + len(self._locked) + len(self._deferred)

    def next_lock_expiry(self) -> float | None:
        """When the earliest lock runs out (epoch seconds), for the wire layer's timer."""
        self._prune_expiries()
        return self._expiries[0][0] if self._expiries else None

    def _prune_expiries(self) -> None:
        while self._expiries:
            until, token = self._expiries[0]
            lock = self._locked.get(token)
            if lock is not None and lock.locked_until == until:
                return
            heapq.heappop(self._expiries)

    # ----------------------------------------------------------------- enqueue
    def enqueue(self, message: StoredMessage) -> None:
        """Make `message` available; its sequence number must already be set."""
        if not message.enqueued_time:
            message.enqueued_time = self.clock()
        self._make_available(message)
        self._notify()

    def _make_available(self, message: StoredMessage) -> None:
        self._available[message.sequence_number] = message
        heapq.heappush(self._order, message.sequence_number)

    def _pop_next(self) -> StoredMessage | None:
        while self._order:
            sequence_number = heapq.heappop(self._order)
            message = self._available.pop(sequence_number, None)
            if message is not None:
                return message
        return None

    # ----------------------------------------------------------------- receive
    def receive(self, *, peek_lock: bool = True) -> Delivery | None:
        """Take the next available message: locked (peek-lock) or removed (receive-and-delete)."""
        self.expire_locks()
        message = self._pop_next()
        if message is None:
            return None
        if not peek_lock:
            return Delivery(message=message, lock_token=None, locked_until=None)
        return self._lock(message)

    def _lock(self, message: StoredMessage) -> Delivery:
        token = uuid.uuid4()
        locked_until = self.clock() + self.lock_duration_s
        self._locked[token] = _Lock(message, locked_until)
        heapq.heappush(self._expiries, (locked_until, token))
        return Delivery(message=message.clone(), lock_token=token, locked_until=locked_until)

    def receive_deferred(
        self, sequence_numbers: Iterable[int], *, peek_lock: bool = True
    ) -> list[Delivery]:
        """Receive deferred messages by sequence number (all or nothing)."""
        self.expire_locks()
        wanted = list(sequence_numbers)
        missing = [n for n in wanted if n not in self._deferred or n in self._deferred_locks]
        if missing:
            raise MessageNotFound(f"No deferred message with sequence number(s) {missing}.")
        deliveries = []
        for sequence_number in wanted:
            message = self._deferred[sequence_number]
            if not peek_lock:
                del self._deferred[sequence_number]
                deliveries.append(Delivery(message=message, lock_token=None, locked_until=None))
                continue
            delivery = self._lock(message)
            assert delivery.lock_token is not None
            self._deferred_locks[sequence_number] = delivery.lock_token
            deliveries.append(delivery)
        return deliveries

    def peek(self, from_sequence_number: int = 1, max_count: int = 1) -> list[StoredMessage]:
        """Copies of the messages from a sequence number on, without locking them (locked
        and deferred ones included, as Service Bus does)."""
        self.expire_locks()
        pool: dict[int, StoredMessage] = dict(self._available)
        pool.update({lock.message.sequence_number: lock.message for lock in self._locked.values()})
        pool.update(self._deferred)
        chosen = sorted(n for n in pool if n >= from_sequence_number)[: max(max_count, 0)]
        return [pool[n].clone() for n in chosen]

    # ----------------------------------------------------------------- settlement
    def _take_lock(self, token: uuid.UUID) -> _Lock:
        self.expire_locks()
        lock = self._locked.pop(token, None)
        if lock is None:
            raise MessageLockLost(
                f"The lock supplied is invalid: it expired or the message was already "
                f"settled (lock token {token}, entity {self.path})."
            )
        sequence_number = lock.message.sequence_number
        if self._deferred_locks.get(sequence_number) == token:
            # A deferred message received by sequence number leaves the deferred set only
            # when it is settled; until then it stays deferred.
            del self._deferred_locks[sequence_number]
            del self._deferred[sequence_number]
        return lock

    def complete(self, token: uuid.UUID) -> None:
        self._take_lock(token)

    def abandon(self, token: uuid.UUID) -> None:
        lock = self._take_lock(token)
        self._retry_or_dead_letter(lock.message)
        self._notify()

    def release(self, token: uuid.UUID) -> None:
        """Hand the message back without counting a delivery attempt (AMQP `released`)."""
        lock = self._take_lock(token)
        if lock.message.deferred:
            self._deferred[lock.message.sequence_number] = lock.message
            return
        self._make_available(lock.message)
        self._notify()

    def defer(self, token: uuid.UUID) -> None:
        lock = self._take_lock(token)
        lock.message.delivery_count += 1
        lock.message.deferred = True
        self._deferred[lock.message.sequence_number] = lock.message

    def dead_letter_message(
        self, token: uuid.UUID, reason: str | None = None, description: str | None = None
    ) -> None:
        if self.dead_letter is None:
            raise InvalidOperation(f"{self.path} has no dead-letter queue.")
        lock = self._take_lock(token)
        lock.message.delivery_count += 1
        self._move_to_dead_letter(lock.message, reason, description)

    def renew_lock(self, token: uuid.UUID) -> float:
        """Extend the lock by the lock duration from now; returns the new expiry."""
        self.expire_locks()
        lock = self._locked.get(token)
        if lock is None:
            raise MessageLockLost(f"The lock supplied is invalid (lock token {token}).")
        lock.locked_until = self.clock() + self.lock_duration_s
        heapq.heappush(self._expiries, (lock.locked_until, token))
        return lock.locked_until

    def locked_until(self, token: uuid.UUID) -> float | None:
        lock = self._locked.get(token)
        return lock.locked_until if lock else None

    # ----------------------------------------------------------------- expiry
    def expire_locks(self) -> int:
        """Return messages whose lock ran out to the entity (or its DLQ); returns how many."""
        if not self._locked:
            self._expiries.clear()
            return 0
        now = self.clock()
        expired = 0
        while True:
            self._prune_expiries()
            if not self._expiries or self._expiries[0][0] > now:
                break
            _, token = heapq.heappop(self._expiries)
            lock = self._locked.pop(token)
            expired += 1
            sequence_number = lock.message.sequence_number
            if self._deferred_locks.get(sequence_number) == token:
                # Counts as an attempt like any other; the message goes back to deferred.
                del self._deferred_locks[sequence_number]
                del self._deferred[sequence_number]
            self._retry_or_dead_letter(lock.message)
        if expired:
            logger.debug("lock expiry", extra={"entity": self.path, "expired": expired})
            self._notify()
        return expired

    def _retry_or_dead_letter(self, message: StoredMessage) -> None:
        message.delivery_count += 1
        limit = self.max_delivery_count
        if limit is not None and self.dead_letter is not None and message.delivery_count >= limit:
            self._move_to_dead_letter(
                message,
                MAX_DELIVERY_COUNT_EXCEEDED,
                f"Message could not be consumed after {limit} delivery attempts.",
            )
            return
        if message.deferred:
            self._deferred[message.sequence_number] = message
            return
        self._make_available(message)

    def _move_to_dead_letter(
        self, message: StoredMessage, reason: str | None, description: str | None
    ) -> None:
        assert self.dead_letter is not None
        message.deferred = False
        message.dead_letter_reason = reason
        message.dead_letter_description = description
        message.dead_letter_source = self.path
        self.dead_letter.enqueue(message)


# --------------------------------------------------------------------------- filters
