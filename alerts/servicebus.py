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
    errors itself (``common.retry`` on its ``Backoff``) and raises the retryable error only when
    its attempts are spent, so the processor does not checkpoint and repeats the whole publish
    later, which duplicate detection makes safe.

Modules
    This one: the mapping above (messages, errors) and the client connection both sides share;
    ``alerts.servicebus_publisher`` and ``alerts.servicebus_receiver`` implement the ports;
    ``alerts.servicebus_config`` holds the settings (loadable without the SDK).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import AzureError
from azure.servicebus import ServiceBusMessage, ServiceBusReceivedMessage
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver, ServiceBusSender
from azure.servicebus.exceptions import (
    MessageAlreadySettled,
    MessageLockLostError,
    MessagingEntityDisabledError,
    OperationTimeoutError,
    ServiceBusCommunicationError,
    ServiceBusConnectionError,
    ServiceBusError,
    ServiceBusQuotaExceededError,
    ServiceBusServerBusyError,
)

from alerts.config import SubscriptionSpec
from alerts.exceptions import (
    AlertBusError,
    AlertBusMisconfigured,
    AlertClientClosedError,
    AlertError,
    LockLostError,
)
from alerts.servicebus_config import ServiceBusSettings
from common import redact
from common.amqp import body_bytes as amqp_body_bytes
from schemas import Breach

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"
# The longest wait between the SDK's own retries (receivers) and between the publisher's.
DEFAULT_BACKOFF_MAX_S = 8.0
# Service Bus caps dead-letter reason and description at 4096 characters each.
MAX_REASON_CHARS = 4096

# Transient by nature: repeating the same call later can succeed.
_TRANSIENT = (
    ServiceBusConnectionError,
    ServiceBusCommunicationError,
    ServiceBusServerBusyError,
    OperationTimeoutError,
    ServiceBusQuotaExceededError,
    MessagingEntityDisabledError,
)
# The AMQP error condition of a refused link to a missing entity.
NOT_FOUND = b"amqp:not-found"
# What the SDK can raise besides its own errors (credential errors are AzureErrors, sockets
# and timeouts can surface unwrapped from the AMQP layer).
SDK_ERRORS = (ServiceBusError, MessageAlreadySettled, AzureError, OSError, TimeoutError)


async def refused_as_missing(
    link: ServiceBusSender | ServiceBusReceiver, path: str
) -> Exception | None:
    """The link's error if its entity does not exist (``amqp:not-found``), found right after
    opening it rather than at its first send or receive; None otherwise.

    Service Bus answers the attach of a missing entity with an attach and an immediate detach
    (``amqp:not-found``), and the SDK's open returns between the two. One turn of the SDK's
    frame loop reads the detach; the next raises it. A receiver without prefetch has no credit
    and a sender sends nothing in it, so no message moves. It reaches into the SDK's private
    handler (azure-servicebus is pinned to 7.15); without it the first send or receive meets
    the same error: a sender, after retrying its attach until its deadline.
    """
    handler = getattr(link, "_handler", None)
    do_work = getattr(handler, "do_work_async", None)
    if do_work is None:
        return None
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
            return exc
        # Anything else is for the first send or receive to retry or report.
        logger.debug("probing the link of %s failed: %r", path, exc)
    return None


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


def utc(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def body_bytes(message: ServiceBusReceivedMessage) -> bytes:
    """The raw body; messages written by other tools may use a value body instead of data."""
    return amqp_body_bytes(message.body_type, message.body)


class ServiceBusConnection:
    """The client part shared by publisher and receiver: open once, close once, never reuse."""

    def __init__(self, settings: ServiceBusSettings, *, retry_total: int, backoff_max_s: float):
        if settings.connection_string is None and not settings.fully_qualified_namespace:
            raise AlertBusMisconfigured(
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
        # By its host only: a connection string pasted as the namespace holds the key.
        namespace = self.settings.fully_qualified_namespace
        return redact.endpoint(namespace) if namespace else "the namespace of the connection string"

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
