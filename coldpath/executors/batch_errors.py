"""The Batch adapters' errors, and what a failed Batch call means: worth repeating or not.

::

    BatchError (ColdpathError)      a Batch call failed; ``retryable`` with ``retry_after``
    ├── BatchMisconfigured           a setting is missing or wrong (also ``Misconfigured``)
    ├── BatchJobConflict             the manifest's job exists in a state or on a pool this
    │                                manifest cannot use as it is (the message says what to do)
    └── BatchJobStalled              a followed job was not done by its deadline

Only passing conditions are retryable: 408, 429 and 5xx answers, and a connection that could
not be made or broke (refused, reset, timed out, a temporary DNS failure). An answer that is not
the Batch service's (not JSON, or JSON of another shape: ``batch_answers``), a TLS failure, a host
name that does not exist, and a credential that is missing or refused are not: the same call would
fail the same way.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from coldpath.exceptions import ColdpathError
from common.errors import Misconfigured

# What a Batch SDK call raises besides AzureError when the answer is not JSON at all.
SDK_FAILURES: tuple[type[Exception], ...] = (AzureError, json.JSONDecodeError, UnicodeDecodeError)
RETRYABLE_STATUSES = (408, 429)
MALFORMED = (DecodeError, DeserializationError, json.JSONDecodeError, UnicodeDecodeError)


class BatchError(ColdpathError):
    """A Batch call failed; ``retryable`` (5xx, 429, connection) with ``retry_after``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, retry_after=retry_after)
        self.status = status
        self.code = code


class BatchMisconfigured(BatchError, Misconfigured):
    """A Batch setting is missing or wrong; the message names it."""


class BatchJobConflict(BatchError):
    """The job named after the manifest cannot be used as it is: another pool, disabled by an
    operator, or ended with other tasks than the manifest's."""


class BatchJobStalled(BatchError):
    """A followed job was not done by the follow deadline; the message says what its tasks
    and its pool were doing. The job is left as it is."""


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps (azure-core's ``inner_exception``, ``__cause__``)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = getattr(current, "inner_exception", None)
        os_error = getattr(current, "os_error", None)  # aiohttp's connector errors
        for nested in (inner, os_error, current.__cause__, current.__context__):
            if isinstance(nested, BaseException):
                pending.append(nested)


def _first_line(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc)
    line = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    header = response.headers.get("Retry-After")
    return float(header) if header and header.isdigit() else None


def map_error(exc: BaseException, what: str) -> BatchError:
    """A failed Batch call as ours, retryable only for a passing condition (module docstring)."""
    if isinstance(exc, BatchError):
        return exc
    causes = list(_causes(exc))
    if isinstance(exc, MALFORMED):
        return BatchError(
            f"{what}: the answer is not a Batch service response ({_first_line(exc)}): check "
            "that azure.batch.account_url is the Batch account's URL (a proxy or captive portal "
            "answers with a page of its own)",
            retryable=False,
        )
    if isinstance(exc, ClientAuthenticationError) and exc.status_code is None:
        return BatchMisconfigured(
            f"{what}: no credential for the Batch account ({_first_line(exc)}): set "
            "azure.batch.account_name and azure.batch.account_key, or give this process an "
            'identity DefaultAzureCredential finds (the role "Azure Batch Job Submitter")',
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = exc.status_code
        code = getattr(exc.error, "code", None)
        message = exc.message.splitlines()[0] if exc.message else type(exc).__name__
        return BatchError(
            f"{what}: {status} {code or ''} {message}".replace("  ", " "),
            status=status,
            code=code,
            retryable=status in RETRYABLE_STATUSES or status >= 500,
            retry_after=_retry_after(exc),
        )
    if isinstance(exc, ServiceRequestError):
        return _connection_error(exc, causes, what)
    if isinstance(exc, ServiceResponseError):
        return BatchError(
            f"{what}: the connection broke before the answer arrived ({_first_line(exc)})",
            retryable=True,
        )
    return BatchError(f"{what}: {_first_line(exc)}", retryable=False)


def _connection_error(
    exc: ServiceRequestError, causes: list[BaseException], what: str
) -> BatchError:
    """A request that could not be sent: retryable unless it never can be (TLS, a name that
    does not exist, a URL that is not http(s))."""
    if any(isinstance(cause, ssl.SSLError) for cause in causes):
        return BatchMisconfigured(
            f"{what}: TLS with the Batch account failed ({_first_line(exc)}): check "
            "azure.batch.account_url (https for an Azure account) and this machine's CA "
            "certificates",
        )
    for cause in causes:
        if isinstance(cause, socket.gaierror) and cause.errno == socket.EAI_NONAME:
            return BatchMisconfigured(
                f"{what}: the Batch account's host name does not exist ({_first_line(exc)}): "
                "check azure.batch.account_url",
            )
        if type(cause).__name__ == "NonHttpUrlClientError":
            return BatchMisconfigured(
                f"{what}: azure.batch.account_url is not an http(s) URL ({_first_line(exc)})"
            )
    return BatchError(
        f"{what}: cannot connect to the Batch account ({_first_line(exc)})", retryable=True
    )
