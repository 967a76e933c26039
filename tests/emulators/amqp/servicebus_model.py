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

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .servicebus_errors import (
    EntityAlreadyExists,
    EntityNotFound,
    InvalidOperation,
    MessageLockLost,
    MessageNotFound,
    ServiceBusModelError,
)
from .servicebus_store import (
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_LOCK_DURATION_S,
    DEFAULT_MAX_DELIVERY_COUNT,
    MAX_DELIVERY_COUNT_EXCEEDED,
    Clock,
    Delivery,
    DuplicateDetector,
    MessageStore,
    StoredMessage,
)

DEAD_LETTER_SUFFIX = "/$DeadLetterQueue"
SUBSCRIPTIONS_SEGMENT = "/Subscriptions/"


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


# The model's public surface, including the store and error names it is built from, so callers
# import everything Service Bus from one place.
__all__ = [
    "DEAD_LETTER_SUFFIX",
    "DEFAULT_DUPLICATE_WINDOW_S",
    "DEFAULT_LOCK_DURATION_S",
    "DEFAULT_MAX_DELIVERY_COUNT",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "SUBSCRIPTIONS_SEGMENT",
    "Clock",
    "CorrelationFilter",
    "Delivery",
    "DuplicateDetector",
    "EntityAlreadyExists",
    "EntityNotFound",
    "InvalidOperation",
    "MessageLockLost",
    "MessageNotFound",
    "MessageStore",
    "Namespace",
    "Queue",
    "ServiceBusModelError",
    "StoredMessage",
    "Subscription",
    "Topic",
]
