"""Errors of the alerts package, under the one error root (``common.errors.EvalstreamError``);
each says whether it is ``retryable`` so callers can decide.

::

    AlertError
    ├── AlertBusError              the bus could not do what was asked (storage, protocol)
    │   └── AlertBusBusyError      the bus is locked by another process too long, or the disk
    │                              is full (retryable)
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

from common.errors import EvalstreamError, Misconfigured

# A busy bus has already made its caller wait the busy timeout: the next attempt waits at least
# this long too, so retries do not keep the file's lock queue full.
BUSY_RETRY_AFTER_S = 1.0


class AlertError(EvalstreamError):
    """Root of every alerts error (below ``common.errors.EvalstreamError``)."""


class AlertBusError(AlertError):
    """The bus failed to store, lock or settle a message."""


class AlertBusMisconfigured(AlertBusError, Misconfigured):
    pass


class AlertBusBusyError(AlertBusError):
    """A passing condition of the bus: another process held its write lock longer than the busy
    timeout, or the disk is full for now."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = BUSY_RETRY_AFTER_S,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)


class AlertClientClosedError(AlertError):
    """A publisher or receiver was used outside its ``async with`` block."""


class UnknownSubscriptionError(AlertError, Misconfigured):
    """The named subscription does not exist; ``known`` lists the ones that do. The operator's
    to fix (a setting, or provisioning): the CLI's exit code 2."""

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
