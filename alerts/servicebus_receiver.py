"""Receiving alerts from a Service Bus subscription: the ``AlertReceiver`` of ``alerts.ports``.

Peek-lock receives, settlement by lock token, lock renewal and peeking at the dead-letter queue;
a subscription that is not provisioned is reported as ``UnknownSubscriptionError``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar

from azure.servicebus import ServiceBusReceivedMessage, ServiceBusSubQueue
from azure.servicebus.aio import ServiceBusClient, ServiceBusReceiver
from azure.servicebus.exceptions import MessagingEntityNotFoundError
from pydantic import ValidationError

from alerts.config import SubscriptionSpec
from alerts.exceptions import AlertError, LockLostError, UnknownSubscriptionError
from alerts.ports import INVALID_BODY, DeadLetteredAlert, ReceivedAlert
from alerts.servicebus import (
    DEFAULT_BACKOFF_MAX_S,
    MAX_REASON_CHARS,
    SDK_ERRORS,
    ServiceBusConnection,
    body_bytes,
    mapped_error,
    refused_as_missing,
    utc,
)
from alerts.servicebus_config import ServiceBusSettings
from schemas import Breach

logger = logging.getLogger(__name__)

# A received message whose lock ran out this long ago is forgotten even if never settled.
FORGET_AFTER_S = 300.0
# receive_messages refuses a wait of 0; the smallest wait that still means "do not wait".
MIN_WAIT_S = 0.01
_T = TypeVar("_T")


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


class ServiceBusAlertReceiver(ServiceBusConnection):
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
            if isinstance(exc, SDK_ERRORS):
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
        """Fail here, not at the first receive, when the subscription does not exist."""
        refused = await refused_as_missing(receiver, self.path)
        if refused is not None:
            raise _MissingSubscriptionError(self.spec.name, self.topic, self.where) from refused

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
        except SDK_ERRORS as exc:
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
            breach = Breach.model_validate_json(body_bytes(message))
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
            except SDK_ERRORS as settle_exc:
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
            enqueued_time=utc(message.enqueued_time_utc),
            locked_until=utc(message.locked_until_utc),
        )

    def _forget_expired(self) -> None:
        # Alerts nobody settles (a crashed handler task) must not pile up here forever.
        horizon = time.time() - FORGET_AFTER_S
        stale = [
            token
            for token, message in self._locked.items()
            if utc(message.locked_until_utc).timestamp() < horizon
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
        return utc(locked_until)

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
        body = body_bytes(message)
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
            dead_lettered_at=utc(message.enqueued_time_utc),
            raw=None if breach is not None else body,
        )


def servicebus_receiver(
    settings: ServiceBusSettings, spec: SubscriptionSpec
) -> ServiceBusAlertReceiver:
    """The receiver for subscription ``spec.name`` of ``settings.topic`` (not yet entered)."""
    return ServiceBusAlertReceiver(settings, spec)
