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

from stream.exceptions import SourceError, SourceMisconfigured, SourceUnavailable
from stream.sources.eventhubs_config import EventHubsSettings, namespace_shown

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

_RETRYABLE_SEND_CONDITIONS = ("server-busy", "timeout", "operation-cancelled")


def map_error(
    exc: Exception, action: str, settings: EventHubsSettings | None = None
) -> SourceError:
    """The project's error for an Event Hubs or Storage SDK error (raise it ``from exc``), in
    one line. With the ``settings`` of the hub the call was about, a hub that does not exist
    is a configuration error naming it, and the namespace is named where it was unreachable."""
    message = f"Event Hubs {action} failed: {type(exc).__name__}: {_first_line(exc)}"
    if settings is not None and isinstance(exc, EventHubError):
        if "not-found" in str(exc.error or ""):
            return SourceMisconfigured(
                f"Event Hubs {action} failed: event hub {settings.eventhub_name!r} does not "
                f"exist in the {namespace_shown(settings)}: set azure.eventhubs.eventhub_name "
                f"(and the connection string's EntityPath) to a provisioned hub "
                f"({_first_line(exc)})"
            )
        message = f"{message} ({namespace_shown(settings)})"
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


def checkpoint_error(exc: Exception, action: str, settings: EventHubsSettings) -> SourceError:
    """The project's error for a Storage SDK error of the checkpoint store, in one line: the
    service's error code and the first line of its message (not the XML body the SDK appends),
    and the settings it is about. Refused credentials or a container name the service rejects
    are configuration errors; unreachable or busy storage is retryable."""
    account = (
        "azure.eventhubs.checkpoint_connection_string"
        if settings.checkpoint_connection_string is not None
        else f"azure.eventhubs.checkpoint_account_url {settings.checkpoint_account_url}"
    )
    where = (
        f"azure.eventhubs.checkpoint_container {settings.checkpoint_container!r} in the "
        f"account of {account}"
    )
    if not isinstance(exc, HttpResponseError):
        mapped = map_error(exc, f"checkpoint store {action}")
        return type(mapped)(f"{mapped} ({where})", retry_after=mapped.retry_after)
    status = exc.status_code or 0
    code = getattr(exc, "error_code", None) or exc.reason or status
    code = getattr(code, "value", code)  # the Storage SDK's StorageErrorCode enum
    message = f"checkpoint store {action} failed: {status} {code}: {_first_line(exc)} ({where})"
    if status == 429 or status >= 500:
        return SourceUnavailable(message, retry_after=_retry_after(exc))
    if status in (400, 401, 403):
        # The key, the SAS or the role (403), or the container's name (400): no retry mends it.
        return SourceMisconfigured(message)
    return SourceError(message)


def _first_line(exc: Exception) -> str:
    # The Event Hubs SDK's errors repeat their message over two more lines ("Error condition:
    # ...", " Error Description: ..."); the first says it all.
    # Azure Core's carry the service's whole answer (an XML body) after theirs.
    text = getattr(exc, "message", None) if isinstance(exc, (EventHubError, AzureError)) else None
    lines = str(text or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


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
