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
from azure.servicebus.aio import ServiceBusClient, ServiceBusSender
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
from common.repeated import RepeatedFailure
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
    """Publishes breaches to the topic ``settings.topic``, in as few batches as fit.

    One instance serves every partition of a processor, so ``publish`` is called concurrently;
    the SDK's sender is not coroutine-safe (its README says so: concurrent sends on one link
    lost deliveries, which then timed out), so each call on it holds ``_lock``. The lock is
    held per attempt, never across the waits between attempts.

    A sender whose call failed is closed and the next attempt opens a new one. A failed call
    may leave its link dead in a way the SDK does not repair: a busy broker echoes an attach
    and then detaches it with ``com.microsoft:server-busy``; the SDK opens on the echo, its
    keep-alive later reads the detach, and from then on every send raises that error again
    without touching the broker (server-busy does not make the SDK reconnect). Seen as
    "Service Bus is busy" for minutes after a busy spell ended.
    """

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
        # The SDK's own retries are off: this class retries, with its own bound and logging.
        super().__init__(settings, retry_total=0, backoff_max_s=backoff.max_s)
        self.topic = settings.topic
        self._client: ServiceBusClient | None = None
        self._sender: ServiceBusSender | None = None
        self._lock = asyncio.Lock()
        # Shared by every partition's publishes: a lasting failure is said once, not per retry.
        self._failures = RepeatedFailure("breach publishes", logger)

    async def __aenter__(self) -> Self:
        _stack, self._client = await self._open_client()
        try:
            # Retried like a send: a processor starting during a short outage waits it out.
            await self._attempts("opening a sender", _opened)
            # A missing topic is said at start, as a listener says a missing subscription:
            # otherwise only the first breach met it, and its publish was retried for ever.
            # (Another error the probe reads, e.g. a busy detach, is for the first send: a
            # failed send opens a fresh sender.)
            assert self._sender is not None
            refused = await refused_as_missing(self._sender, self.topic)
            if refused is not None:
                raise self._missing_topic() from refused
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Closing the client closes every sender it made.
        self._sender = self._client = None
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
            batch = await self._attempts("preparing a batch", _new_batch)
            added = self._fill(batch, messages, sent)
            await self._attempts("sending breaches", functools.partial(self._send, batch))
            sent += added
            batches += 1
        logger.debug(
            "published alerts", extra={"topic": self.topic, "count": sent, "batches": batches}
        )

    async def _send(self, batch: ServiceBusMessageBatch, sender: ServiceBusSender) -> None:
        await sender.send_messages(batch, timeout=self.attempt_timeout_s)

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

    async def _with_sender(self, operation: Callable[[ServiceBusSender], Awaitable[_T]]) -> _T:
        """One attempt: ``operation`` on the open sender (opened first if there is none),
        alone on it; a sender that fails is closed, the next attempt opens another."""
        async with self._lock:
            self._require_open()  # it may have been closed while this call waited
            assert self._client is not None
            sender = self._sender
            try:
                # The SDK bounds sends itself; this bound also covers opening and
                # reconnecting, which can hang on a broker that stopped answering.
                async with asyncio.timeout(self.attempt_timeout_s * 2):
                    if sender is None:
                        sender = self._client.get_topic_sender(self.topic)
                        await sender.__aenter__()
                        self._sender = sender
                    return await operation(sender)
            except BaseException:
                self._sender = None
                if sender is not None:
                    await self._discard(sender)
                raise

    async def _discard(self, sender: ServiceBusSender) -> None:
        try:
            # Bounded: a broker that stopped answering does not answer a detach either.
            async with asyncio.timeout(self.attempt_timeout_s):
                await asyncio.shield(sender.close())
        except Exception as exc:
            # The link is given up either way; the client closes what is left at exit.
            logger.debug("closing a failed sender failed: %r", exc, extra={"topic": self.topic})

    async def _attempts(
        self, doing: str, operation: Callable[[ServiceBusSender], Awaitable[_T]]
    ) -> _T:
        """Run ``operation`` under the backoff; map the SDK error that ends it. Failures are
        said through ``_failures``: once as they start, not at each retry, and their end once
        a call succeeds again (one that gave up is repeated by its caller: still failing)."""
        what = f"{doing} for topic {self.topic!r}"
        key = f"topic {self.topic!r}"

        def mapped(exc: Exception) -> BaseException:
            if isinstance(exc, MessagingEntityNotFoundError):
                return self._missing_topic()
            return mapped_error(exc, what) if isinstance(exc, SDK_ERRORS) else exc

        try:
            result = await retry(
                functools.partial(self._with_sender, operation),
                backoff=self.backoff,
                what=what,
                map_error=mapped,
                on_failure=lambda exc, wait: self._failures.failed(key, exc, wait),
            )
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
        self._failures.succeeded(key)
        return result


async def _opened(sender: ServiceBusSender) -> None:
    """Nothing more: the attempt opened the sender."""


async def _new_batch(sender: ServiceBusSender) -> ServiceBusMessageBatch:
    return await sender.create_message_batch()


def servicebus_publisher(
    settings: ServiceBusSettings, *, backoff: Backoff = DEFAULT_BACKOFF
) -> ServiceBusAlertPublisher:
    """The publisher for ``settings.topic`` (not yet entered)."""
    return ServiceBusAlertPublisher(settings, backoff=backoff)
