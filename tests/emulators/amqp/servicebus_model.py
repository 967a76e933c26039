"""Service Bus entities for the test broker as plain Python: queues, topics, subscriptions,
peek-lock, settlement, dead-lettering and duplicate detection, with no AMQP in it.

The wire half (`servicebus.py`) translates links and frames into calls on these objects;
this module is what decides what a real namespace would do with a message.

Conventions that follow the Service Bus wire behaviour of azure-servicebus 7.15:
- `delivery_count` is the AMQP header value: how many times the message was handed out under
  a lock before, so 0 on the first delivery and +1 after every abandon, lock expiry, defer or
  dead-letter. A message whose count reaches `max_delivery_count` through abandons or lock
  expiries is dead-lettered with reason `MaxDeliveryCountExceeded` instead of being offered
  again.
- A release (the client handing back a message it never showed to the application) does
  not count as a delivery attempt.
- Sequence numbers are assigned by the entity that accepts the send (queue or topic) and
  travel with the message into subscriptions and dead-letter queues.
- Entity names are case-insensitive, as in Service Bus.
"""

from __future__ import annotations

import copy
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"
SUBSCRIPTIONS_SEGMENT = "/Subscriptions/"
MAX_DELIVERY_COUNT_EXCEEDED = "MaxDeliveryCountExceeded"

DEFAULT_MAX_DELIVERY_COUNT = 10
DEFAULT_LOCK_DURATION_S = 30.0
DEFAULT_DUPLICATE_WINDOW_S = 600.0

Clock = Callable[[], float]


class ServiceBusModelError(Exception):
    """Base of the errors the model reports; `condition` is the AMQP error condition the
    broker puts on the wire for it (the SDK maps these conditions to its exceptions)."""

    condition = "amqp:internal-error"
    status_code = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class MessageLockLost(ServiceBusModelError):
    """The lock token is unknown or its lock expired (SDK: MessageLockLostError)."""

    condition = "com.microsoft:message-lock-lost"
    status_code = 410


class MessageNotFound(ServiceBusModelError):
    """No deferred message has that sequence number (SDK: MessageNotFoundError)."""

    condition = "com.microsoft:message-not-found"
    status_code = 404


class EntityNotFound(ServiceBusModelError):
    """No queue, topic or subscription under that path (SDK: MessagingEntityNotFoundError)."""

    condition = "amqp:not-found"
    status_code = 404


class EntityAlreadyExists(ServiceBusModelError):
    condition = "com.microsoft:entity-already-exists"
    status_code = 409


class InvalidOperation(ServiceBusModelError):
    """The operation makes no sense on this entity, e.g. dead-lettering from a DLQ."""

    condition = "amqp:not-allowed"
    status_code = 400


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
_SYSTEM_PROPERTIES = {
    "subject": "subject",
    "label": "subject",
    "messageid": "message_id",
    "correlationid": "correlation_id",
    "contenttype": "content_type",
    "to": "to",
    "replyto": "reply_to",
    "sessionid": "session_id",
}


def _filter_key(name: str) -> tuple[str, str]:
    """('system', attribute) for `sys.<name>` keys, ('user', name) for application properties."""
    if name.lower().startswith("sys."):
        plain = name[4:].replace("_", "").replace("-", "").lower()
        attribute = _SYSTEM_PROPERTIES.get(plain)
        if attribute is None:
            raise ValueError(f"unknown system property in filter: {name!r}")
        return "system", attribute
    return "user", name


def _as_filter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


@dataclass(frozen=True)
class CorrelationFilter:
    """A Service Bus correlation filter: every listed property must equal its value.

    Keys starting with `sys.` name system properties, as in Service Bus SQL filters:
    `sys.subject` (or `sys.label`), `sys.message_id`, `sys.correlation_id`,
    `sys.content_type`, `sys.to`, `sys.reply_to`, `sys.session_id`. Any other key names an
    application property. Values compare as text (booleans as `true`/`false`).
    An empty filter matches everything (Service Bus' TrueFilter).
    """

    properties: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.properties:
            _filter_key(name)

    def matches(self, message: StoredMessage) -> bool:
        for name, expected in self.properties.items():
            kind, key = _filter_key(name)
            if kind == "system":
                actual = getattr(message, key)
            elif key in message.application_properties:
                actual = message.application_properties[key]
            else:
                return False
            if actual is None or _as_filter_text(actual) != expected:
                return False
        return True


# --------------------------------------------------------------------------- entities
class _SendTarget:
    """What queues and topics share: sequence numbers and duplicate detection."""

    def __init__(self, name: str, *, duplicate_window_s: float, clock: Clock) -> None:
        self.name = name
        self.clock = clock
        self.duplicates = DuplicateDetector(duplicate_window_s, clock)
        self._sequence = itertools.count(1)
        self.sent_count = 0
        self.duplicate_count = 0

    def send(self, message: StoredMessage) -> bool:
        """Accept a message; returns False when it was dropped as a duplicate."""
        if self.duplicates.is_duplicate(message.message_id):
            self.duplicate_count += 1
            return False
        message.sequence_number = next(self._sequence)
        message.enqueued_time = self.clock()
        message.delivery_count = 0
        self.sent_count += 1
        self._distribute(message)
        return True

    def _distribute(self, message: StoredMessage) -> None:
        raise NotImplementedError


class Queue(_SendTarget):
    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
    ) -> None:
        super().__init__(name, duplicate_window_s=duplicate_window_s, clock=clock)
        dead_letter = MessageStore(
            name + DEAD_LETTER_SUFFIX,
            clock=clock,
            max_delivery_count=None,
            lock_duration_s=lock_duration_s,
        )
        self.store = MessageStore(
            name,
            clock=clock,
            max_delivery_count=max_delivery_count,
            lock_duration_s=lock_duration_s,
            dead_letter=dead_letter,
        )

    def _distribute(self, message: StoredMessage) -> None:
        self.store.enqueue(message)


class Subscription:
    def __init__(
        self,
        topic: str,
        name: str,
        *,
        clock: Clock,
        filter: Mapping[str, str] | None = None,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
    ) -> None:
        self.topic = topic
        self.name = name
        self.filter = CorrelationFilter(dict(filter or {}))
        path = f"{topic}{SUBSCRIPTIONS_SEGMENT}{name}"
        dead_letter = MessageStore(
            path + DEAD_LETTER_SUFFIX,
            clock=clock,
            max_delivery_count=None,
            lock_duration_s=lock_duration_s,
        )
        self.store = MessageStore(
            path,
            clock=clock,
            max_delivery_count=max_delivery_count,
            lock_duration_s=lock_duration_s,
            dead_letter=dead_letter,
        )


class Topic(_SendTarget):
    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
    ) -> None:
        super().__init__(name, duplicate_window_s=duplicate_window_s, clock=clock)
        self.subscriptions: dict[str, Subscription] = {}

    def _distribute(self, message: StoredMessage) -> None:
        # A message no subscription wants is dropped, as Service Bus does.
        for subscription in self.subscriptions.values():
            if subscription.filter.matches(message):
                subscription.store.enqueue(message.clone())


def _key(name: str) -> str:
    return name.strip("/").lower()


class Namespace:
    """All entities of one broker, addressed the way AMQP link addresses name them.

    Receivable paths: `<queue>`, `<queue>/$DeadLetterQueue`, `<topic>/Subscriptions/<sub>`,
    `<topic>/Subscriptions/<sub>/$DeadLetterQueue`. Sendable paths: `<queue>`, `<topic>`.
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self.queues: dict[str, Queue] = {}
        self.topics: dict[str, Topic] = {}

    # admin -------------------------------------------------------------------
    def create_queue(
        self,
        name: str,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
    ) -> Queue:
        self._check_free(name)
        queue = Queue(
            name,
            clock=self.clock,
            max_delivery_count=max_delivery_count,
            lock_duration_s=lock_duration_s,
            duplicate_window_s=duplicate_window_s,
        )
        self.queues[_key(name)] = queue
        return queue

    def create_topic(
        self, name: str, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    ) -> Topic:
        self._check_free(name)
        topic = Topic(name, clock=self.clock, duplicate_window_s=duplicate_window_s)
        self.topics[_key(name)] = topic
        return topic

    def create_subscription(
        self,
        topic: str,
        name: str,
        filter: Mapping[str, str] | None = None,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
    ) -> Subscription:
        owner = self.topic(topic)
        if _key(name) in owner.subscriptions:
            raise EntityAlreadyExists(f"Subscription {topic}/{name} already exists.")
        subscription = Subscription(
            owner.name,
            name,
            clock=self.clock,
            filter=filter,
            max_delivery_count=max_delivery_count,
            lock_duration_s=lock_duration_s,
        )
        owner.subscriptions[_key(name)] = subscription
        return subscription

    def delete_entity(self, name: str) -> None:
        key = _key(name)
        if self.queues.pop(key, None) is None and self.topics.pop(key, None) is None:
            raise EntityNotFound(f"No queue or topic named {name!r}.")

    def _check_free(self, name: str) -> None:
        if not name or "/" in name.strip("/"):
            raise ValueError(f"invalid entity name: {name!r}")
        if _key(name) in self.queues or _key(name) in self.topics:
            raise EntityAlreadyExists(f"An entity named {name!r} already exists.")

    # lookup ------------------------------------------------------------------
    def topic(self, name: str) -> Topic:
        topic = self.topics.get(_key(name))
        if topic is None:
            raise EntityNotFound(f"No topic named {name!r}.")
        return topic

    def queue(self, name: str) -> Queue:
        queue = self.queues.get(_key(name))
        if queue is None:
            raise EntityNotFound(f"No queue named {name!r}.")
        return queue

    def sender_target(self, path: str) -> Queue | Topic:
        key = _key(path)
        target = self.queues.get(key) or self.topics.get(key)
        if target is None:
            raise EntityNotFound(f"No queue or topic at {path!r}.")
        return target

    def store(self, path: str) -> MessageStore:
        """The receivable entity at `path` (see the class docstring for the forms)."""
        clean = path.strip("/")
        dead_letter = clean.lower().endswith(DEAD_LETTER_SUFFIX.lower())
        if dead_letter:
            clean = clean[: -len(DEAD_LETTER_SUFFIX)]
        parts = clean.split("/")
        store: MessageStore | None = None
        if len(parts) == 1 and _key(parts[0]) in self.queues:
            store = self.queues[_key(parts[0])].store
        elif len(parts) == 3 and parts[1].lower() == "subscriptions":
            topic = self.topics.get(_key(parts[0]))
            subscription = topic.subscriptions.get(_key(parts[2])) if topic else None
            store = subscription.store if subscription else None
        if store is None:
            raise EntityNotFound(f"No queue or subscription at {path!r}.")
        if dead_letter:
            assert store.dead_letter is not None
            return store.dead_letter
        return store

    def is_receivable(self, path: str) -> bool:
        try:
            self.store(path)
        except EntityNotFound:
            return False
        return True

    def is_sendable(self, path: str) -> bool:
        key = _key(path)
        return key in self.queues or key in self.topics

    def all_stores(self) -> list[MessageStore]:
        stores: list[MessageStore] = []
        for queue in self.queues.values():
            stores.append(queue.store)
        for topic in self.topics.values():
            stores.extend(s.store for s in topic.subscriptions.values())
        stores.extend([s.dead_letter for s in list(stores) if s.dead_letter is not None])
        return stores

    def expire_locks(self) -> int:
        """Run lock expiry on every entity; the wire layer calls this from its timer."""
        return sum(store.expire_locks() for store in self.all_stores())

    def next_lock_expiry(self) -> float | None:
        expiries = [e for e in (s.next_lock_expiry() for s in self.all_stores()) if e is not None]
        return min(expiries) if expiries else None
