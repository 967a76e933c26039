"""Alert handlers for subscribers: print each breach to a console, or POST it to a webhook.

Each is an ``AlertHandler`` (``alerts.ports``) for ``alerts.listener.AlertListener``: returning
means delivered, raising means the listener retries the alert later (and dead-letters it after
the subscription's max delivery count).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Self, TextIO
from urllib.parse import urlsplit

import httpx
from rich.console import Console
from rich.text import Text

from alerts.exceptions import AlertClientClosedError, AlertDeliveryError, WebhookRejectedError
from alerts.ports import AlertHandler, ReceivedAlert
from common import redact
from common.printable import printable
from common.retry import Backoff, retry
from schemas import Breach, BreachState, Severity

logger = logging.getLogger(__name__)

DEFAULT_WEBHOOK_TIMEOUT_S = 10.0
# Three requests per delivery, 0.5 s and 1 s apart (no jitter: one handler, one destination).
DEFAULT_WEBHOOK_BACKOFF = Backoff(initial_s=0.5, max_s=8.0, jitter=False, max_retries=2)
# 408 and 429 say "not now" rather than "never": retried like 5xx.
TRANSIENT_4XX = frozenset({408, 429})

_SEVERITY_STYLE = {Severity.CRITICAL: "bold red", Severity.WARNING: "yellow"}
_STATE_STYLE = {
    BreachState.OPENED: "bold",
    BreachState.ESCALATED: "bold red",
    BreachState.RESOLVED: "green",
}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def render_breach(breach: Breach) -> Text:
    """One readable line: time, severity, app, signal, kind, state, observed vs threshold, the
    detectors that agree (an incident's evidence), id."""
    if breach.state is BreachState.RESOLVED:
        when = breach.resolved_at or breach.opened_at
    elif breach.state is BreachState.ESCALATED:
        when = breach.window_end
    else:
        when = breach.opened_at
    line = Text()
    line.append(when.strftime("%Y-%m-%d %H:%M:%S%z"), style="dim")
    line.append("  ")
    line.append(f"{breach.severity.value.upper():<8}", style=_SEVERITY_STYLE[breach.severity])
    line.append("  ")
    line.append(f"{breach.state.value:<9}", style=_STATE_STYLE[breach.state])
    line.append("  ")
    line.append(printable(breach.app_id), style="cyan")
    # A score's name is the producer's text: printed with its control characters escaped.
    line.append(f"  {printable(breach.signal)}  {breach.kind.value}  ")
    line.append(f"observed {_number(breach.observed)}")
    line.append(f" vs threshold {_number(breach.threshold)}")
    if breach.baseline is not None:
        line.append(f" (baseline {_number(breach.baseline)})", style="dim")
    line.append(f"  detectors {printable('+'.join(breach.detectors))}")
    line.append(f"  breach {breach.breach_id}", style="dim")
    return line


class ConsoleHandler:
    """Prints each alert: a coloured line (rich), or one JSON object per line (``json_lines``)."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        json_lines: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.json_lines = json_lines
        self.stream = stream if stream is not None else sys.stdout
        # highlight off: rich's number/URL highlighting would recolour parts of the line.
        self.console = console or Console(file=self.stream, highlight=False, soft_wrap=True)

    async def handle(self, alert: ReceivedAlert) -> None:
        if self.json_lines:
            # Plain write, not rich: JSON lines must never be wrapped or styled.
            self.stream.write(alert.breach.model_dump_json() + "\n")
            self.stream.flush()
        else:
            self.console.print(render_breach(alert.breach))


class HandlerChain:
    """Runs handlers in order; the first that raises stops the chain (and fails the alert)."""

    def __init__(self, handlers: Sequence[AlertHandler]) -> None:
        self.handlers = tuple(handlers)

    async def handle(self, alert: ReceivedAlert) -> None:
        for handler in self.handlers:
            await handler.handle(alert)


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot take webhook posts, or None: it needs http(s), a host and a port in
    range (checked before listening, not at the first breach)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError when out of range or not a number
    except ValueError as exc:
        return f"webhook URL is not valid: {redact.scrub(str(exc), url)}"
    if parts.scheme not in ("http", "https"):
        return f"webhook URL must be http(s), got {redact.webhook(url)!r}"
    if not parts.hostname:
        return f"webhook URL has no host: {redact.webhook(url)!r}"
    return None


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None  # an HTTP date: rare for webhooks; our own backoff applies


class WebhookHandler:
    """POSTs each breach as JSON to ``url``; an async context manager.

    One delivery attempt makes up to ``backoff.max_retries + 1`` requests: transport errors
    (connect, timeout, ...), 5xx, 408 and 429 are retried after the backoff's wait (longer if
    the server's ``Retry-After`` asks for it, capped at ``backoff.max_s``); other 4xx raise
    ``WebhookRejectedError`` at once. When all requests fail, ``AlertDeliveryError`` is raised
    and the listener retries the alert later. Each request carries ``X-Evalstream-Message-Id``
    (also as ``Idempotency-Key``) so a receiver can drop the duplicates that at-least-once
    delivery allows.
    """

    def __init__(
        self,
        url: str,
        *,
        client: httpx.AsyncClient | None = None,
        timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S,
        backoff: Backoff = DEFAULT_WEBHOOK_BACKOFF,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        problem = webhook_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
        if backoff.max_retries is None:
            raise ValueError("the webhook backoff needs a max_retries: a delivery must end")
        self.url = url
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.headers = dict(headers or {})
        self._client = client
        self._owns_client = client is None
        self._closed = False

    async def __aenter__(self) -> Self:
        if self._closed:
            raise AlertClientClosedError("WebhookHandler was closed; create a new one")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._owns_client and self._client is not None:
            await self._client.aclose()
        self._client = None

    async def handle(self, alert: ReceivedAlert) -> None:
        if self._client is None:
            raise AlertClientClosedError("WebhookHandler is not open; use it inside 'async with'")
        body = alert.breach.model_dump_json().encode()
        headers = {
            **self.headers,
            "content-type": "application/json",
            "x-evalstream-message-id": alert.message_id,
            "idempotency-key": alert.message_id,
            "x-evalstream-delivery-count": str(alert.delivery_count),
        }
        # A webhook's path is its credential (Slack, Teams): errors name the host and a
        # fingerprint of the rest, and take the URL out of what the server or httpx said.
        target = redact.webhook(self.url)
        client = self._client

        def said(text: str) -> str:
            return redact.scrub(text, self.url)

        async def post() -> None:
            try:
                response = await client.post(
                    self.url, content=body, headers=headers, timeout=self.timeout_s
                )
            except httpx.TransportError as exc:
                raise AlertDeliveryError(
                    f"POST {target} failed: {type(exc).__name__}: {said(str(exc))}", retryable=True
                ) from exc
            except httpx.HTTPError as exc:
                raise AlertDeliveryError(f"POST {target} failed: {said(str(exc))}") from exc
            status = response.status_code
            if 200 <= status < 300:
                return
            message = f"POST {target} answered {status}: {said(response.text)[:200]}"
            if status >= 500 or status in TRANSIENT_4XX:
                asked = _retry_after_s(response)
                # A server asking for hours must not hold the alert's lock that long.
                wait = None if asked is None else min(asked, self.backoff.max_s)
                raise AlertDeliveryError(
                    message, retryable=True, status_code=status, retry_after=wait
                )
            raise WebhookRejectedError(message, status_code=status)

        await retry(
            post,
            backoff=self.backoff,
            what=f"webhook delivery of alert {alert.message_id}",
            log_fields={"message_id": alert.message_id},
        )
