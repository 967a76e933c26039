"""Publishing breaches to the Service Bus topic: the ``AlertPublisher`` of ``alerts.ports``.

One message per breach (see ``alerts.servicebus`` for the shape), in as few batches as fit;
transient failures are retried per batch with the common retry loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Self, TypeVar

from azure.servicebus import ServiceBusMessage, ServiceBusMessageBatch
from azure.servicebus.aio import ServiceBusSender
from azure.servicebus.exceptions import MessageSizeExceededError, MessagingEntityNotFoundError

from alerts.exceptions import AlertBusError, AlertBusMisconfigured, AlertError
from alerts.servicebus import (
    DEFAULT_BACKOFF_MAX_S,
    SDK_ERRORS,
    ServiceBusConnection,
    breach_message,
    mapped_error,
    refused_as_missing,
)
from alerts.servicebus_config import ServiceBusSettings
from common.retry import Backoff, retry
from schemas import Breach

logger = logging.getLogger(__name__)

DEFAULT_ATTEMPT_TIMEOUT_S = 10.0
# Eight attempts; the waits between them (0.5, 1, 2, 4, 8, 8, 8 s, each 80-100% of that) add
# up to 25-31.5 s, plus the attempts themselves.
DEFAULT_BACKOFF = Backoff(
    initial_s=0.5, max_s=DEFAULT_BACKOFF_MAX_S, max_retries=7, jitter_fraction=0.2
)

_T = TypeVar("_T")


class ServiceBusAlertPublisher(ServiceBusConnection):
    """Publishes breaches to the topic ``settings.topic``, in as few batches as fit."""

    def __init__(
        self,
        settings: ServiceBusSettings,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
    ) -> None:
        if attempt_timeout_s <= 0:
            raise ValueError(f"attempt_timeout_s must be > 0, got {attempt_timeout_s}")
        self.backoff = backoff
        self.attempt_timeout_s = attempt_timeout_s
        # The SDK's own retries are off: this class retries, with its own bound and logging,
        # and the SDK reconnects the sender on the next call after a failure.
        super().__init__(settings, retry_total=0, backoff_max_s=backoff.max_s)
        self.topic = settings.topic
        self._sender: ServiceBusSender | None = None

    async def __aenter__(self) -> Self:
        stack, client = await self._open_client()
        sender = client.get_topic_sender(self.topic)
        try:
            # Retried like a send: a processor starting during a short outage waits it out.
            await self._attempts("opening a sender", lambda: stack.enter_async_context(sender))
            # A missing topic is said at start, as a listener says a missing subscription:
            # otherwise only the first breach met it, and its publish was retried for ever.
            refused = await refused_as_missing(sender, self.topic)
            if refused is not None:
                raise self._missing_topic() from refused
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
        return AlertBusMisconfigured(
            f"Service Bus topic {self.topic!r} (azure.servicebus.topic) does not exist in "
            f"{self.where}; topics are provisioned infrastructure (see alerts/servicebus.py)"
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
        await self._sender.send_messages(batch, timeout=self.attempt_timeout_s)

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
        """Run ``operation`` under the backoff; map the SDK error that ends it."""
        what = f"{doing} for topic {self.topic!r}"

        async def attempt() -> _T:
            # The SDK bounds sends itself; this bound also covers reconnecting, which can hang
            # on a broker that stopped answering.
            async with asyncio.timeout(self.attempt_timeout_s * 2):
                return await operation()

        def mapped(exc: Exception) -> BaseException:
            if isinstance(exc, MessagingEntityNotFoundError):
                return self._missing_topic()
            return mapped_error(exc, what) if isinstance(exc, SDK_ERRORS) else exc

        try:
            return await retry(attempt, backoff=self.backoff, what=what, map_error=mapped)
        except AlertError as exc:
            if not exc.retryable:
                raise
            # The loop raises a retryable error only once the attempts are spent.
            attempts = (self.backoff.max_retries or 0) + 1
            raise AlertBusError(
                f"{exc} (gave up after {attempts} attempts)",
                retryable=True,
                retry_after=exc.retry_after,
            ) from exc.__cause__


def servicebus_publisher(
    settings: ServiceBusSettings, *, backoff: Backoff = DEFAULT_BACKOFF
) -> ServiceBusAlertPublisher:
    """The publisher for ``settings.topic`` (not yet entered)."""
    return ServiceBusAlertPublisher(settings, backoff=backoff)
