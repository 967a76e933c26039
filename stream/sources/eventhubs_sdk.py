"""What the Event Hubs consumer and producer share of the SDK: the mapping of its errors (and
the Storage SDK's) to ours, and the default credential."""

from __future__ import annotations

from typing import TYPE_CHECKING

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.eventhub.exceptions import (
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    ConnectionLostError,
    EventDataError,
    EventDataSendError,
    EventHubError,
    OperationTimeoutError,
)

from stream.exceptions import SourceError, SourceUnavailable

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

_RETRYABLE_SEND_CONDITIONS = ("server-busy", "timeout", "operation-cancelled")


def map_error(exc: Exception, action: str) -> SourceError:
    """The project's error for an Event Hubs or Storage SDK error (raise it ``from exc``)."""
    message = f"Event Hubs {action} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, (AuthenticationError, ClientAuthenticationError, EventDataError)):
        return SourceError(message)
    if isinstance(exc, ClientClosedError):
        return SourceError(message)
    if isinstance(exc, (ConnectError, ConnectionLostError, OperationTimeoutError)):
        return SourceUnavailable(message)
    if isinstance(exc, EventDataSendError):
        # azure-eventhub does not retry a send the service rejected as busy.
        text = f"{exc.error or ''} {exc}".lower()
        if any(condition in text for condition in _RETRYABLE_SEND_CONDITIONS):
            return SourceUnavailable(message)
        return SourceError(message)
    if isinstance(exc, EventHubError):
        return SourceUnavailable(message)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return SourceUnavailable(message)
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            return SourceUnavailable(message, retry_after=_retry_after(exc))
        return SourceError(message)
    if isinstance(exc, AzureError):
        return SourceUnavailable(message)
    return SourceError(message)


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def default_credential() -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()
