"""Errors of the alerts package: one root, each with ``retryable`` so callers can decide.

::

    AlertError
    ├── AlertBusError              the bus could not do what was asked (storage, protocol)
    │   └── AlertBusBusyError      the bus is locked by another process for too long (retryable)
    ├── AlertClientClosedError     a publisher or receiver was used after it was closed
    ├── UnknownSubscriptionError   no subscription of that name exists
    ├── LockLostError              settle or renew after the message lock expired
    └── AlertDeliveryError         a handler could not deliver an alert (e.g. webhook)
        └── WebhookRejectedError   the webhook answered 4xx: retrying would not help

Adapters (SQLite, Service Bus) translate their library errors into these with
``raise ... from exc`` so nothing library-specific leaks into the listener or the processor.
"""

from __future__ import annotations

from collections.abc import Sequence


class AlertError(Exception):
    """Root of every alerts error."""

    retryable: bool = False

    def __init__(
        self, message: str, *, retryable: bool | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        # Seconds the caller should wait before retrying, when the cause says so.
        self.retry_after = retry_after


class AlertBusError(AlertError):
    """The bus failed to store, lock or settle a message."""


class AlertBusBusyError(AlertBusError):
    """Another process held the bus's write lock longer than the busy timeout."""

    retryable = True


class AlertClientClosedError(AlertError):
    """A publisher or receiver was used outside its ``async with`` block."""


class UnknownSubscriptionError(AlertError):
    """The named subscription does not exist; ``known`` lists the ones that do."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        listed = ", ".join(sorted(known)) or "(none)"
        super().__init__(f"unknown subscription {name!r}; known subscriptions: {listed}")
        self.name = name
        self.known = tuple(sorted(known))


class LockLostError(AlertError):
    """The message's lock expired or it was settled already; it will be (or was) redelivered.

    Not retryable: the same lock token will never become valid again. The message itself is
    not lost, it becomes visible to receivers again.
    """


class AlertDeliveryError(AlertError):
    """A handler failed to deliver an alert to its destination."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        status_code: int | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.status_code = status_code


class WebhookRejectedError(AlertDeliveryError):
    """The webhook answered with a 4xx status other than 408/429."""
