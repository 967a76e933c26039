"""The alert bus on Azure Service Bus: breaches published to a topic, read from its subscriptions.

``ServiceBusAlertPublisher`` and ``ServiceBusAlertReceiver`` implement the ports of
``alerts.ports`` with ``azure.servicebus.aio``; the listener, the handlers and the processor use
them exactly like the embedded SQLite topic.

How a breach travels
    One ``ServiceBusMessage`` per breach: body = the Breach as JSON (content type
    ``application/json``), ``message_id = breach.message_id`` (``<breach_id>:<state>``, so the
    topic's duplicate detection drops a re-publish of the same breach state), ``subject`` = the
    breach kind, and ``application_properties = breach.routing_properties`` (``app_id``,
    ``severity``, ``kind``, ``state``: the only properties subscriptions filter on).

Subscriptions are infrastructure
    On Azure the topic and its subscriptions are provisioned (Bicep/ARM), not created by this
    adapter; a receiver whose subscription does not exist raises
    ``UnknownSubscriptionError``. Provision the topic with duplicate detection on
    (``requiresDuplicateDetection: true``; its window bounds how late a re-publish is still
    recognised), and each ``[[alerts.subscriptions]]`` entry (``SubscriptionSpec``) as::

        SubscriptionSpec                  Service Bus subscription
        name                              subscription name
        max_delivery_count                maxDeliveryCount (must be equal: the listener
                                          dead-letters with the handler's error on that
                                          delivery, a smaller value makes Service Bus
                                          dead-letter first with MaxDeliveryCountExceeded)
        lock_duration_s                   lockDuration (ISO 8601, e.g. PT30S)
        filter {key: value, ...}          one rule with filterType CorrelationFilter and
                                          correlationFilter.properties = {key: value, ...}
                                          (application properties, all must match);
                                          an empty filter = the default rule ($Default,
                                          TrueFilter: every breach)

    ``correlation_filter(spec)`` returns those properties. In Bicep::

        resource rule 'Microsoft.ServiceBus/namespaces/topics/subscriptions/rules@2021-11-01' = {
          parent: subscription
          name: 'routing'
          properties: {
            filterType: 'CorrelationFilter'
            correlationFilter: { properties: { severity: 'critical' } }
          }
        }

    (delete the ``$Default`` rule of a filtered subscription, or it receives everything).

Delivery counts
    ``ReceivedAlert.delivery_count`` counts this delivery (the first is 1), as the port says.
    Service Bus puts "deliveries before this one" into the AMQP header of a received message and
    azure-servicebus returns that header as is, so the receiver adds one. Peeked messages (the
    dead-letter queue) carry the count itself and are reported unchanged.

Errors
    SDK errors are mapped to ``alerts.exceptions`` at this boundary: lost or settled locks to
    ``LockLostError``; connection, timeout, server-busy and quota errors to a retryable
    ``AlertBusError``; everything else to a non-retryable one. The publisher retries transient
    errors itself (``RetryPolicy``) and raises the retryable error only when its attempts are
    spent, so the processor does not checkpoint and repeats the whole publish later, which
    duplicate detection makes safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from azure.core.exceptions import AzureError
from azure.servicebus import (
    ServiceBusMessage,
    ServiceBusMessageBatch,
    ServiceBusReceivedMessage,
    ServiceBusSubQueue,
)
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.amqp import AmqpMessageBodyType
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessageSizeExceededError,
    MessagingEntityDisabledError,
    MessagingEntityNotFoundError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
)
from pydantic import ValidationError

from alerts.exceptions import (
    AlertBusError,
    AlertClientClosedError,
    AlertError,
    LockLostError,
    UnknownSubscriptionError,
)
from alerts.ports import (
    INVALID_BODY,
    DeadLetteredAlert,
    ReceivedAlert,
    SubscriptionSpec,
)
from schemas import Breach

if TYPE_CHECKING:
    # Only the type: the settings object is built by the composition root and passed in.
    from evalstream.settings import ServiceBusSettings

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
DEFAULT_MAX_ATTEMPTS = 8
DEFAULT_BACKOFF_INITIAL_S = 0.5
DEFAULT_BACKOFF_MAX_S = 8.0
DEFAULT_ATTEMPT_TIMEOUT_S = 10.0
# Service Bus caps dead-letter reason and description at 4096 characters each.
MAX_REASON_CHARS = 4096
# A received message whose lock ran out this long ago is forgotten even if never settled.
FORGET_AFTER_S = 300.0
# The AMQP error condition of a refused link to a missing entity.
NOT_FOUND = b"amqp:not-found"
# receive_messages refuses a wait of 0; the smallest wait that still means "do not wait".
MIN_WAIT_S = 0.01

_T = TypeVar("_T")

# Transient by nature: repeating the same call later can succeed.
_TRANSIENT = (
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    ServiceBusServerBusyError,
    OperationTimeoutError,
    ServiceBusQuotaExceededError,
    MessagingEntityDisabledError,
)
# What the SDK can raise besides its own errors (credential errors are AzureErrors, sockets
# and timeouts can surface unwrapped from the AMQP layer).
_SDK_ERRORS = (ServiceBusError, MessageAlreadySettled, AzureError, OSError, TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """How the publisher retries a transient failure before giving up.

    Each attempt is bounded by ``attempt_timeout_s``; between attempts it waits an exponential
    backoff from ``backoff_initial_s`` up to ``backoff_max_s`` (with jitter). With the defaults
    the waits between the 8 attempts add up to 25-31.5 s, plus the attempts themselves.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_initial_s: float = DEFAULT_BACKOFF_INITIAL_S
    backoff_max_s: float = DEFAULT_BACKOFF_MAX_S
    attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.attempt_timeout_s <= 0:
            raise ValueError(f"attempt_timeout_s must be > 0, got {self.attempt_timeout_s}")

    def backoff_s(self, attempt: int) -> float:
        """Delay after the failed attempt number ``attempt`` (1-based)."""
        delay: float = min(self.backoff_initial_s * 2.0 ** (attempt - 1), self.backoff_max_s)
        # Jitter keeps processors that failed together from retrying in lockstep.
        return delay * random.uniform(0.8, 1.0)


def correlation_filter(spec: SubscriptionSpec) -> dict[str, str]:
    """The application properties of the subscription's correlation filter rule ({} = all)."""
    return dict(spec.filter)


def breach_message(breach: Breach) -> ServiceBusMessage:
    """The Service Bus message for one breach (see the module docstring)."""
    # Typed as the SDK's wider key and value types (str is one of each).
    properties: dict[str | bytes, Any] = {k: v for k, v in breach.routing_properties.items()}
    return ServiceBusMessage(
        breach.model_dump_json().encode(),
        message_id=breach.message_id,
        subject=breach.kind.value,
        content_type=CONTENT_TYPE,
        application_properties=properties,
    )


def mapped_error(exc: BaseException, doing: str) -> AlertError:
    """The project's error for an SDK error raised while ``doing`` something."""
    if isinstance(exc, MessageLockLostError | MessageAlreadySettled):
        return LockLostError(f"{doing}: the message lock expired or it was settled already ({exc})")
    if isinstance(exc, ServiceBusServerBusyError):
        return AlertBusError(f"{doing}: Service Bus is busy ({exc})", retryable=True)
    if isinstance(exc, (*_TRANSIENT, OSError, TimeoutError)):
        return AlertBusError(f"{doing}: {type(exc).__name__}: {exc}", retryable=True)
    return AlertBusError(f"{doing}: {type(exc).__name__}: {exc}", retryable=False)


def _utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """The raw body; messages written by other tools may use a value body instead of data."""
    body_type = message.body_type
    if body_type == AmqpMessageBodyType.DATA:
        return b"".join(bytes(part) for part in message.body)
    if body_type == AmqpMessageBodyType.SEQUENCE:
        return repr(list(message.body)).encode()
    body = message.body
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return repr(body).encode()


class _Connection:
    """The client part shared by publisher and receiver: open once, close once, never reuse."""

    def __init__(self, settings: ServiceBusSettings, *, retry_total: int, backoff_max_s: float):
        if settings.connection_string is None and not settings.fully_qualified_namespace:
            raise AlertBusError(
                "the Service Bus alert bus needs azure.servicebus.connection_string or "
                "azure.servicebus.fully_qualified_namespace (with DefaultAzureCredential)"
            )
        self.settings = settings
        self.retry_total = retry_total
        self.backoff_max_s = backoff_max_s
        self._stack: contextlib.AsyncExitStack | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return self.settings.fully_qualified_namespace or "the namespace of the connection string"

    async def _open_client(self) -> tuple[contextlib.AsyncExitStack, ServiceBusClient]:
        if self._closed:
            raise AlertClientClosedError(f"{type(self).__name__} was closed; create a new one")
        if self._stack is not None:
            raise AlertBusError(f"{type(self).__name__} is already open")
        stack = contextlib.AsyncExitStack()
        options: dict[str, Any] = {
            "retry_total": self.retry_total,
            "retry_backoff_max": self.backoff_max_s,
        }
        try:
            if self.settings.connection_string is not None:
                client = ServiceBusClient.from_connection_string(
                    self.settings.connection_string.get_secret_value(), **options
                )
            else:
                # Imported here: only the managed-identity path needs azure-identity.
                from azure.identity.aio import DefaultAzureCredential

                credential = await stack.enter_async_context(DefaultAzureCredential())
                assert self.settings.fully_qualified_namespace is not None
                client = ServiceBusClient(
                    self.settings.fully_qualified_namespace, credential, **options
                )
            await stack.enter_async_context(client)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return stack, client

    async def _close(self) -> None:
        self._closed = True
        stack, self._stack = self._stack, None
        if stack is not None:
            # Shielded: a cancelled caller must still close the AMQP connection.
            await asyncio.shield(stack.aclose())

    def _require_open(self) -> None:
        if self._stack is None:
            raise AlertClientClosedError(
                f"{type(self).__name__} is not open; use it inside 'async with'"
            )


class ServiceBusAlertPublisher(_Connection):
    """Publishes breaches to the topic ``settings.topic``, in as few batches as fit."""

    def __init__(self, settings: ServiceBusSettings, *, retry: RetryPolicy | None = None) -> None:
        self.retry = retry or RetryPolicy()
        # The SDK's own retries are off: this class retries, with its own bound and logging,
        # and the SDK reconnects the sender on the next call after a failure.
        super().__init__(settings, retry_total=0, backoff_max_s=self.retry.backoff_max_s)
        self.topic = settings.topic
        self._sender: ServiceBusSender | None = None

    async def __aenter__(self) -> Self:
        stack, client = await self._open_client()
        sender = client.get_topic_sender(self.topic)
        try:
            # Retried like a send: a processor starting during a short outage waits it out.
            await self._attempts("opening a sender", lambda: stack.enter_async_context(sender))
        except BaseException:
            await self._close()
            raise
        self._sender = sender
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sender = None
        await self._close()

    def _missing_topic(self) -> AlertError:
        return AlertBusError(
            f"Service Bus topic {self.topic!r} does not exist in {self.where}; topics are "
            "provisioned infrastructure (see alerts/servicebus.py)"
        )

    async def publish(self, breaches: Sequence[Breach]) -> None:
        """Send every breach; durable when it returns (Service Bus acknowledged each batch).

        Transient failures are retried per batch; when the attempts are spent a retryable
        ``AlertBusError`` is raised and the caller repeats the whole call: batches that did get
        through are dropped by duplicate detection, so nothing is delivered twice.
        """
        self._require_open()
        if not breaches:
            return
        messages = [breach_message(breach) for breach in breaches]
        sent = 0
        batches = 0
        while sent < len(messages):
            batch = await self._attempts("preparing a batch", self._new_batch)
            added = self._fill(batch, messages, sent)
            await self._attempts("sending breaches", functools.partial(self._send, batch))
            sent += added
            batches += 1
        logger.debug(
            "published alerts", extra={"topic": self.topic, "count": sent, "batches": batches}
        )

    async def _new_batch(self) -> ServiceBusMessageBatch:
        assert self._sender is not None
        return await self._sender.create_message_batch()

    async def _send(self, batch: ServiceBusMessageBatch) -> None:
        assert self._sender is not None
        await self._sender.send_messages(batch, timeout=self.retry.attempt_timeout_s)

    def _fill(
        self, batch: ServiceBusMessageBatch, messages: list[ServiceBusMessage], start: int
    ) -> int:
        """Add messages from ``start`` until the batch is full; returns how many were added."""
        added = 0
        for message in messages[start:]:
            try:
                batch.add_message(message)
            except MessageSizeExceededError as exc:
                if added == 0:
                    raise AlertBusError(
                        f"breach message {message.message_id} does not fit into an empty "
                        f"Service Bus batch ({batch.max_size_in_bytes} bytes)"
                    ) from exc
                break
            added += 1
        return added

    async def _attempts(self, doing: str, operation: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``operation`` with the retry policy; map the SDK error that ends it."""
        attempt = 0
        while True:
            attempt += 1
            try:
                # The SDK bounds sends itself; this bound also covers reconnecting, which
                # can hang on a broker that stopped answering.
                async with asyncio.timeout(self.retry.attempt_timeout_s * 2):
                    return await operation()
            except asyncio.CancelledError:
                raise
            except _SDK_ERRORS as exc:
                error = (
                    self._missing_topic()
                    if isinstance(exc, MessagingEntityNotFoundError)
                    else mapped_error(exc, f"{doing} for topic {self.topic!r}")
                )
                if not error.retryable or attempt >= self.retry.max_attempts:
                    if error.retryable:
                        error = AlertBusError(
                            f"{error} (gave up after {attempt} attempts)", retryable=True
                        )
                    raise error from exc
                delay = self.retry.backoff_s(attempt)
                logger.warning(
                    "%s failed (attempt %d of %d), retrying in %.1f s: %s",
                    doing,
                    attempt,
                    self.retry.max_attempts,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)


class _MissingSubscriptionError(UnknownSubscriptionError):
    """The subscription is not provisioned on the topic (the known ones cannot be listed)."""

    def __init__(self, name: str, topic: str, where: str) -> None:
        AlertError.__init__(
            self,
            f"Service Bus subscription {name!r} does not exist on topic {topic!r} in {where}; "
            "subscriptions are provisioned infrastructure (Bicep/ARM), not created by "
            "evalstream: see the mapping in alerts/servicebus.py",
        )
        self.name = name
        self.known = ()


class ServiceBusAlertReceiver(_Connection):
    """Receives from ``<topic>/Subscriptions/<spec.name>`` with peek-lock.

    Received messages are kept by lock token until they are settled (the SDK settles message
    objects, the port passes ``ReceivedAlert``s). A message whose body is not a Breach is
    dead-lettered with reason ``InvalidBody`` and never returned.

    A subscription that does not exist raises ``UnknownSubscriptionError`` from ``async with``
    (and, should that probe not catch it, from the first ``receive``).
    """

    def __init__(
        self,
        settings: ServiceBusSettings,
        spec: SubscriptionSpec,
        *,
        retry_total: int = 3,
        backoff_max_s: float = DEFAULT_BACKOFF_MAX_S,
    ) -> None:
        super().__init__(settings, retry_total=retry_total, backoff_max_s=backoff_max_s)
        self.spec = spec
        self.topic = settings.topic
        self._client: ServiceBusClient | None = None
        self._receiver: ServiceBusReceiver | None = None
        self._dead_letter_receiver: ServiceBusReceiver | None = None
        self._locked: dict[str, ServiceBusReceivedMessage] = {}

    @property
    def path(self) -> str:
        return f"{self.topic}/Subscriptions/{self.spec.name}"

    async def __aenter__(self) -> Self:
        stack, client = await self._open_client()
        try:
            receiver = await stack.enter_async_context(
                client.get_subscription_receiver(self.topic, self.spec.name)
            )
        except BaseException as exc:
            await self._close()
            if isinstance(exc, MessagingEntityNotFoundError):
                raise _MissingSubscriptionError(self.spec.name, self.topic, self.where) from exc
            if isinstance(exc, _SDK_ERRORS):
                raise mapped_error(exc, f"opening a receiver for {self.path}") from exc
            raise
        try:
            await self._confirm_attached(receiver)
        except BaseException:
            await self._close()
            raise
        self._client = client
        self._receiver = receiver
        return self

    async def _confirm_attached(self, receiver: ServiceBusReceiver) -> None:
        """Fail here, not at the first receive, when the subscription does not exist.

        Service Bus answers the attach of a missing entity with an attach and an immediate
        detach (``amqp:not-found``), and the SDK's open returns between the two. One turn of
        the SDK's frame loop reads the detach; with no prefetch the link has no credit, so this
        cannot receive a message. It reaches into the SDK's private handler (azure-servicebus
        is pinned to 7.15); without it the first receive reports the same error.
        """
        handler = getattr(receiver, "_handler", None)
        do_work = getattr(handler, "do_work_async", None)
        if do_work is None:
            return
        try:
            await do_work()
            # The first turn reads the detach and marks the link failed; the next raises.
            state = getattr(getattr(handler, "_link", None), "state", None)
            if getattr(state, "name", None) == "ERROR":
                await do_work()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # The SDK's private AMQP layer: its errors are not ServiceBusErrors yet.
            condition = getattr(exc, "condition", None)
            if getattr(condition, "value", condition) == NOT_FOUND:
                raise _MissingSubscriptionError(self.spec.name, self.topic, self.where) from exc
            # Anything else is for the first receive to retry or report.
            logger.debug("probing the link of %s failed: %r", self.path, exc)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client = self._receiver = self._dead_letter_receiver = None
        self._locked.clear()
        await self._close()

    def _open_receiver(self) -> ServiceBusReceiver:
        self._require_open()
        assert self._receiver is not None
        return self._receiver

    async def _call(self, doing: str, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except MessagingEntityNotFoundError as exc:
            raise _MissingSubscriptionError(self.spec.name, self.topic, self.where) from exc
        except _SDK_ERRORS as exc:
            raise mapped_error(exc, f"{doing} ({self.path})") from exc

    async def receive(self, max_count: int, max_wait_s: float) -> list[ReceivedAlert]:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        receiver = self._open_receiver()
        messages = await self._call(
            "receiving alerts",
            receiver.receive_messages(
                max_message_count=max_count, max_wait_time=max(max_wait_s, MIN_WAIT_S)
            ),
        )
        self._forget_expired()
        alerts: list[ReceivedAlert] = []
        for message in messages:
            alert = await self._alert_or_dead_letter(receiver, message)
            if alert is not None:
                self._locked[alert.lock_token] = message
                alerts.append(alert)
        return alerts

    async def _alert_or_dead_letter(
        self, receiver: ServiceBusReceiver, message: ServiceBusReceivedMessage
    ) -> ReceivedAlert | None:
        try:
            breach = Breach.model_validate_json(_body_bytes(message))
        except ValidationError as exc:
            logger.error(
                "dead-lettering message %s of %s: its body is not a Breach",
                message.message_id,
                self.path,
            )
            try:
                await receiver.dead_letter_message(
                    message, reason=INVALID_BODY, error_description=str(exc)[:MAX_REASON_CHARS]
                )
            except _SDK_ERRORS as settle_exc:
                # It comes back after its lock expires and is dead-lettered then.
                logger.warning(
                    "could not dead-letter message %s: %r", message.message_id, settle_exc
                )
            return None
        return ReceivedAlert(
            breach=breach,
            message_id=str(message.message_id or breach.message_id),
            # The header counts earlier deliveries; the port counts this one too.
            delivery_count=(message.delivery_count or 0) + 1,
            lock_token=str(message.lock_token),
            enqueued_time=_utc(message.enqueued_time_utc),
            locked_until=_utc(message.locked_until_utc),
        )

    def _forget_expired(self) -> None:
        # Alerts nobody settles (a crashed handler task) must not pile up here forever.
        horizon = time.time() - FORGET_AFTER_S
        stale = [
            token
            for token, message in self._locked.items()
            if _utc(message.locked_until_utc).timestamp() < horizon
        ]
        for token in stale:
            del self._locked[token]

    def _message_of(self, alert: ReceivedAlert) -> ServiceBusReceivedMessage:
        message = self._locked.get(alert.lock_token)
        if message is None:
            raise LockLostError(
                f"alert {alert.message_id} is not locked by this receiver of {self.path} "
                "(settled already, or its lock expired long ago)"
            )
        return message

    async def _settle(
        self,
        doing: str,
        alert: ReceivedAlert,
        operation: Callable[..., Awaitable[None]],
        *args: Any,
    ) -> None:
        self._open_receiver()
        message = self._message_of(alert)
        try:
            await self._call(f"{doing} alert {alert.message_id}", operation(message, *args))
        except LockLostError:
            self._locked.pop(alert.lock_token, None)
            raise
        self._locked.pop(alert.lock_token, None)

    async def complete(self, alert: ReceivedAlert) -> None:
        await self._settle("completing", alert, self._open_receiver().complete_message)

    async def abandon(self, alert: ReceivedAlert) -> None:
        await self._settle("abandoning", alert, self._open_receiver().abandon_message)

    async def dead_letter(self, alert: ReceivedAlert, reason: str, description: str) -> None:
        await self._settle(
            "dead-lettering",
            alert,
            self._open_receiver().dead_letter_message,
            reason[:MAX_REASON_CHARS],
            description[:MAX_REASON_CHARS],
        )

    async def renew_lock(self, alert: ReceivedAlert) -> datetime:
        receiver = self._open_receiver()
        message = self._message_of(alert)
        try:
            locked_until = await self._call(
                f"renewing the lock of alert {alert.message_id}",
                receiver.renew_message_lock(message),
            )
        except LockLostError:
            self._locked.pop(alert.lock_token, None)
            raise
        return _utc(locked_until)

    async def dead_letters(self, max_count: int = 100) -> list[DeadLetteredAlert]:
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        dead_letter_receiver = await self._dead_letter_queue()
        peeked: list[ServiceBusReceivedMessage] = []
        # Peek by sequence number from the start each time: oldest first, nothing removed.
        # A peek may return fewer messages than asked while more exist, hence the loop.
        next_sequence_number = 1
        while len(peeked) < max_count:
            page = await self._call(
                "peeking at the dead-letter queue",
                dead_letter_receiver.peek_messages(
                    max_count - len(peeked), sequence_number=next_sequence_number
                ),
            )
            if not page:
                break
            peeked.extend(page)
            next_sequence_number = max(m.sequence_number or 0 for m in page) + 1
        return [self._dead_lettered(message) for message in peeked[:max_count]]

    async def _dead_letter_queue(self) -> ServiceBusReceiver:
        self._require_open()
        if self._dead_letter_receiver is None:
            assert self._client is not None and self._stack is not None
            receiver = self._client.get_subscription_receiver(
                self.topic, self.spec.name, sub_queue=ServiceBusSubQueue.DEAD_LETTER
            )
            await self._call(
                "opening the dead-letter queue", self._stack.enter_async_context(receiver)
            )
            await self._confirm_attached(receiver)
            self._dead_letter_receiver = receiver
        return self._dead_letter_receiver

    @staticmethod
    def _dead_lettered(message: ServiceBusReceivedMessage) -> DeadLetteredAlert:
        body = _body_bytes(message)
        try:
            breach: Breach | None = Breach.model_validate_json(body)
        except ValidationError:
            breach = None
        return DeadLetteredAlert(
            breach=breach,
            message_id=str(message.message_id or (breach.message_id if breach else "")),
            reason=message.dead_letter_reason or "",
            description=message.dead_letter_error_description or "",
            # Peeked messages carry the delivery count itself (not "earlier deliveries").
            delivery_count=message.delivery_count or 0,
            # Service Bus does not stamp when a message was dead-lettered; its enqueued time
            # is the closest it reports.
            dead_lettered_at=_utc(message.enqueued_time_utc),
            raw=None if breach is not None else body,
        )


def servicebus_publisher(
    settings: ServiceBusSettings, *, retry: RetryPolicy | None = None
) -> ServiceBusAlertPublisher:
    """The publisher for ``settings.topic`` (not yet entered)."""
    return ServiceBusAlertPublisher(settings, retry=retry)


def servicebus_receiver(
    settings: ServiceBusSettings, spec: SubscriptionSpec
) -> ServiceBusAlertReceiver:
    """The receiver for subscription ``spec.name`` of ``settings.topic`` (not yet entered)."""
    return ServiceBusAlertReceiver(settings, spec)


__all__ = [
    "CONTENT_TYPE",
    "RetryPolicy",
    "ServiceBusAlertPublisher",
    "ServiceBusAlertReceiver",
    "breach_message",
    "correlation_filter",
    "mapped_error",
    "servicebus_publisher",
    "servicebus_receiver",
]
