"""Service Bus for the AMQP test broker: the wire half that plugs the entity model
(`servicebus_model`) into the broker core (`broker.EntityHandler`).

Use it through `install(broker)`, which returns the admin object and also exposes its public
methods on the broker (`broker.create_queue(...)`, `broker.create_topic(...)`,
`broker.create_subscription(...)`, `broker.servicebus_counts(path)`, ...). What it speaks is
what azure-servicebus 7.15 needs (see shared/notes/azure-wire-contract.md):
- sender links to `<queue>` or `<topic>`; batches (message-format 0x80013700) are split;
- receiver links from `<queue>`, `<topic>/Subscriptions/<sub>` and either with
  `/$DeadLetterQueue`; peek-lock when the client lets the broker send unsettled
  (receive-and-delete when it asks for pre-settled transfers); delivery tags are the lock
  tokens (`UUID(bytes_le=tag)`);
- settlement: the client's unsettled disposition is applied to the model and answered with
  a settled disposition carrying the same outcome (accepted = complete, modified = abandon or
  defer, rejected `com.microsoft:dead-letter` = dead-letter, released = hand back without
  counting); an expired or unknown lock is answered with `com.microsoft:message-lock-lost`;
- `<entity>/$management`: renew-lock, peek-message, receive-by-sequence-number and
  update-disposition (see `servicebus_management`);
- lock expiry runs on a timer on the broker loop, so expired messages go back to waiting
  receivers without any client activity.

Admin API (any thread): `create_queue`, `create_topic`, `create_subscription` (correlation
filter as a dict), `delete_servicebus_entity`; inspection: `servicebus_counts(path)`,
`servicebus_peek(path)`, `servicebus_peek_rendered(path)`, `servicebus_sent(name)`; faults:
`servicebus_lose_locks(enabled)`, `servicebus_pause_deliveries(paused)` besides the core's
`drop_connections`, `stall`, `server_busy`.

Not implemented (a real namespace has them): sessions, scheduled messages, message TTL and
expiry, auto-forwarding, SQL filters and rule management over AMQP, the HTTP management API
(`ServiceBusAdministrationClient`), partitioned entities.

All model state is touched on the broker loop only: admin calls from test threads hop onto it
with `broker.call`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from . import codec
from .broker import Broker
from .entity import (
    EntityHandler,
    IncomingDelivery,
    LinkRefused,
    ManagementReply,
    ManagementRequest,
    OutgoingDelivery,
)
from .links import Link
from .servicebus_management import error_reply, handle_request, unsupported
from .servicebus_messages import (
    DEAD_LETTER_DESCRIPTION,
    DEAD_LETTER_REASON,
    delivery_tag,
    parse_transfer,
    render,
    render_delivery,
)
from .servicebus_model import (
    DEFAULT_DUPLICATE_WINDOW_S,
    DEFAULT_LOCK_DURATION_S,
    DEFAULT_MAX_DELIVERY_COUNT,
    Clock,
    Delivery,
    EntityNotFound,
    MessageLockLost,
    MessageStore,
    Namespace,
    Queue,
    ServiceBusModelError,
    StoredMessage,
    Subscription,
    Topic,
)

logger = logging.getLogger(__name__)

EXTENSION_NAME = "servicebus"
DEAD_LETTER_CONDITION = "com.microsoft:dead-letter"
MAX_MESSAGE_SIZE = 1024 * 1024
# Fires a little after the lock expiry so the model's clock has certainly passed it.
_TIMER_SLACK_S = 0.005


def _modified_flags(state: Any) -> tuple[bool, bool]:
    fields = codec.fields_of(state)
    return bool(fields[0]), bool(fields[1])


def _dead_letter_details(state: Any) -> tuple[str | None, str | None, str | None]:
    """(error condition, reason, description) of a rejected outcome."""
    fields = codec.fields_of(state)
    error = fields[0]
    if error is None:
        return None, None, None
    condition, description, info = codec.fields_of(error)
    details = {str(k): v for k, v in (info or {}).items()}
    reason = details.get(DEAD_LETTER_REASON)
    described = details.get(DEAD_LETTER_DESCRIPTION, description)
    return (
        str(condition) if condition is not None else None,
        str(reason) if reason is not None else None,
        str(described) if described is not None else None,
    )


class ServiceBusHandler(EntityHandler):
    """The broker plug-in serving every Service Bus entity of one `Namespace`."""

    def __init__(self, namespace: Namespace) -> None:
        self.namespace = namespace
        self._receivers: dict[MessageStore, list[Link]] = {}
        self._pumping: set[MessageStore] = set()
        self._pump_again: set[MessageStore] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        # Fault hooks (admin): reject settlements with lock-lost, hold back deliveries.
        self.lose_locks = False
        self.paused = False

    # ----------------------------------------------------------------- attach / detach
    async def on_attach(self, link: Link) -> None:
        if link.role == "receiver":  # the client sends
            if not self.namespace.is_sendable(link.path):
                raise LinkRefused("amqp:not-found", f"No queue or topic at {link.path!r}.")
            return
        try:
            store = self.namespace.store(link.path)
        except EntityNotFound as exc:
            raise LinkRefused(exc.condition, exc.description) from exc
        link.state["sb_store"] = store
        # Pre-settled transfers requested (snd-settle-mode settled) = receive-and-delete.
        link.state["sb_peek_lock"] = link.snd_settle_mode != 1
        links = self._receivers.setdefault(store, [])
        if not links:
            store.add_listener(self._on_available)
        links.append(link)

    def on_detach(self, link: Link, error: Any) -> None:
        store = link.state.get("sb_store")
        if store is None:
            return
        links = self._receivers.get(store, [])
        if link in links:
            links.remove(link)
        if not links:
            self._receivers.pop(store, None)
            store.remove_listener(self._on_available)
        # Messages locked through this link stay locked until they expire, as in Service Bus.

    # ----------------------------------------------------------------- sending to clients
    def on_flow(self, link: Link) -> None:
        store = link.state.get("sb_store")
        if store is not None:
            self._pump(store)

    def _on_available(self, store: MessageStore) -> None:
        self._pump(store)

    def _pump(self, store: MessageStore) -> None:
        """Hand available messages to the receivers of `store` while they have credit."""
        if store in self._pumping:
            # Re-entered from a model notification during a receive: finish the outer loop.
            self._pump_again.add(store)
            return
        if self.paused:
            return
        self._pumping.add(store)
        try:
            while True:
                self._pump_again.discard(store)
                self._pump_once(store)
                if store not in self._pump_again:
                    break
        finally:
            self._pumping.discard(store)
        self._arm_timer()

    def _pump_once(self, store: MessageStore) -> None:
        # Round-robin, one message per receiver per pass, so competing consumers share.
        while True:
            ready = [
                link
                for link in self._receivers.get(store, [])
                if not link.detached and link.credit > 0
            ]
            if not ready:
                return
            for link in ready:
                delivery = store.receive(peek_lock=link.state["sb_peek_lock"])
                if delivery is None:
                    return
                self._send(link, store, delivery)

    def _send(self, link: Link, store: MessageStore, delivery: Delivery) -> None:
        outgoing = link.send(render_delivery(delivery), tag=delivery_tag(delivery))
        outgoing.context = (store, delivery.lock_token)

    # ----------------------------------------------------------------- settlement
    def on_disposition(
        self, link: Link, delivery: OutgoingDelivery, state: Any, settled: bool
    ) -> None:
        if delivery.context is None:
            return
        store, token = delivery.context
        if token is None:
            return  # receive-and-delete: nothing to settle
        echo = self._settle(store, token, state)
        if not settled:
            link.settle_outgoing(delivery, echo)

    def _settle(self, store: MessageStore, token: uuid.UUID, state: Any) -> Any:
        """Apply a client outcome to the model; return the outcome to echo back."""
        code = codec.descriptor_of(state)
        try:
            if self.lose_locks:
                raise _lock_lost(token)
            if code == codec.ACCEPTED:
                store.complete(token)
                return codec.accepted()
            if code == codec.RELEASED:
                store.release(token)
                return codec.released()
            if code == codec.MODIFIED:
                _, undeliverable_here = _modified_flags(state)
                if undeliverable_here:
                    store.defer(token)
                else:
                    store.abandon(token)
                return state
            if code == codec.REJECTED:
                condition, reason, description = _dead_letter_details(state)
                if condition not in (None, DEAD_LETTER_CONDITION):
                    reason = reason or condition
                store.dead_letter_message(token, reason, description)
                # The echo must not carry an error: an error means "could not apply".
                return codec.composite(codec.REJECTED)
            # `received` or anything unknown: not a terminal outcome; leave the lock alone.
            return state
        except ServiceBusModelError as exc:
            return codec.rejected(exc.condition, exc.description)

    # ----------------------------------------------------------------- receiving from clients
    async def on_transfer(self, link: Link, delivery: IncomingDelivery) -> Any:
        if len(delivery.payload) > MAX_MESSAGE_SIZE:
            return codec.rejected(
                "amqp:link:message-size-exceeded",
                f"The message is {len(delivery.payload)} bytes; the limit is {MAX_MESSAGE_SIZE}.",
            )
        try:
            target = self.namespace.sender_target(link.path)
            messages = parse_transfer(delivery.payload, delivery.message_format)
        except ServiceBusModelError as exc:
            return codec.rejected(exc.condition, exc.description)
        for message in messages:
            target.send(message)
        return codec.accepted()

    # ----------------------------------------------------------------- management
    async def on_management(self, request: ManagementRequest) -> ManagementReply:
        entity = request.entity or ""
        if self.namespace.is_sendable(entity) and not self.namespace.is_receivable(entity):
            # A topic's management node serves sender operations (scheduled messages).
            reply = unsupported(request.operation)
        else:
            try:
                store = self.namespace.store(entity)
            except EntityNotFound as exc:
                reply = error_reply(exc)
            else:
                reply = handle_request(store, request.operation, request.body)
        self._arm_timer()
        return ManagementReply(
            reply.status_code,
            body=reply.body,
            description=reply.description,
            properties=reply.error_properties(),
        )

    # ----------------------------------------------------------------- lock expiry timer
    def _arm_timer(self) -> None:
        expiry = self.namespace.next_lock_expiry()
        if expiry is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not on the broker loop (unit use): expiry happens lazily on access
        due = loop.time() + max(0.0, expiry - self.namespace.clock()) + _TIMER_SLACK_S
        if self._timer is not None and not self._timer.cancelled() and self._timer_due <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(due, self._on_timer)
        self._timer_due = due

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.namespace.expire_locks()  # listeners push the messages to receivers
        except Exception:
            logger.exception("service bus lock expiry failed")
        self._arm_timer()


def _lock_lost(token: uuid.UUID) -> ServiceBusModelError:
    return MessageLockLost(f"The test broker is injecting lock loss (lock token {token}).")


class ServiceBusAdmin:
    """Admin API of the Service Bus half; installed on the broker as extension `servicebus`.

    Every method may be called from any thread; it runs on the broker loop.
    """

    def __init__(self, broker: Broker, clock: Clock = time.time) -> None:
        self._broker = broker
        self.servicebus_namespace = Namespace(clock=clock)
        self.servicebus_handler = ServiceBusHandler(self.servicebus_namespace)

    # entities -----------------------------------------------------------------
    def create_queue(
        self,
        name: str,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
        duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S,
    ) -> Queue:
        queue = self._broker.call(
            self.servicebus_namespace.create_queue,
            name,
            max_delivery_count,
            lock_duration_s,
            duplicate_window_s,
        )
        self._broker.register(name, self.servicebus_handler)
        return queue

    def create_topic(
        self, name: str, duplicate_window_s: float = DEFAULT_DUPLICATE_WINDOW_S
    ) -> Topic:
        topic = self._broker.call(self.servicebus_namespace.create_topic, name, duplicate_window_s)
        self._broker.register(name, self.servicebus_handler)
        return topic

    def create_subscription(
        self,
        topic: str,
        name: str,
        filter: Mapping[str, str] | None = None,
        max_delivery_count: int = DEFAULT_MAX_DELIVERY_COUNT,
        lock_duration_s: float = DEFAULT_LOCK_DURATION_S,
    ) -> Subscription:
        """A subscription with one correlation filter (None or {} = every message).

        Filter keys name application properties, or system properties with a `sys.` prefix
        (`sys.subject`, `sys.message_id`, `sys.correlation_id`, `sys.content_type`, `sys.to`,
        `sys.reply_to`, `sys.session_id`); all listed properties must match (as text).
        """
        return self._broker.call(
            self.servicebus_namespace.create_subscription,
            topic,
            name,
            filter,
            max_delivery_count,
            lock_duration_s,
        )

    def delete_servicebus_entity(self, name: str) -> None:
        self._broker.call(self.servicebus_namespace.delete_entity, name)
        self._broker.unregister(name)

    # inspection ---------------------------------------------------------------
    def servicebus_counts(self, path: str) -> dict[str, int]:
        """{active, locked, deferred, dead_lettered} of a queue, subscription or DLQ path."""
        return self._broker.call(lambda: self.servicebus_namespace.store(path).counts())

    def servicebus_peek(self, path: str, max_count: int = 100) -> list[StoredMessage]:
        """Copies of the messages held at `path` (locked and deferred ones included)."""
        return self._broker.call(lambda: self.servicebus_namespace.store(path).peek(1, max_count))

    def servicebus_peek_rendered(self, path: str, max_count: int = 100) -> list[bytes]:
        """The same messages encoded as a receiver would get them (for decoding in tests)."""

        def peek() -> list[bytes]:
            store = self.servicebus_namespace.store(path)
            return [render(m) for m in store.peek(1, max_count)]

        return self._broker.call(peek)

    def servicebus_sent(self, name: str) -> tuple[int, int]:
        """(accepted, dropped-as-duplicate) message counts of a queue or topic."""

        def sent() -> tuple[int, int]:
            target = self.servicebus_namespace.sender_target(name)
            return target.sent_count, target.duplicate_count

        return self._broker.call(sent)

    # faults -------------------------------------------------------------------
    def servicebus_lose_locks(self, enabled: bool = True) -> None:
        """While enabled, every link settlement is answered with message-lock-lost."""
        self._broker.call(setattr, self.servicebus_handler, "lose_locks", enabled)

    def servicebus_pause_deliveries(self, paused: bool = True) -> None:
        """While paused, receivers get nothing (messages wait); resuming delivers them."""

        def apply() -> None:
            self.servicebus_handler.paused = paused
            if not paused:
                for store in list(self.servicebus_handler._receivers):
                    self.servicebus_handler._pump(store)

        self._broker.call(apply)

    def servicebus_connection_string(self, host: str = "127.0.0.1") -> str:
        return connection_string(self._broker, host)


def connection_string(broker: Broker, host: str = "127.0.0.1") -> str:
    """A connection string the unmodified SDK accepts for this broker (plain TCP, any key:
    the broker's CBS node accepts every token)."""
    return (
        f"Endpoint=sb://{host}:{broker.port}/;SharedAccessKeyName=RootManageSharedAccessKey;"
        "SharedAccessKey=dGVzdC1icm9rZXIta2V5;UseDevelopmentEmulator=true;"
    )


def install(broker: Broker, clock: Clock = time.time) -> ServiceBusAdmin:
    """Add the Service Bus half to `broker` (idempotent) and return its admin object."""
    try:
        existing = broker.extension(EXTENSION_NAME)
    except KeyError:
        existing = None
    if isinstance(existing, ServiceBusAdmin):
        return existing
    admin = ServiceBusAdmin(broker, clock)
    broker.add_extension(EXTENSION_NAME, admin)
    return admin


__all__ = [
    "EXTENSION_NAME",
    "ServiceBusAdmin",
    "ServiceBusHandler",
    "connection_string",
    "install",
]
