"""Console and webhook handlers; the webhook against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from alerts import AlertDeliveryError, ReceivedAlert, SubscriptionSpec, WebhookRejectedError
from alerts.handlers import ConsoleHandler, HandlerChain, WebhookHandler, render_breach
from alerts.listener import AlertListener
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common.retry import Backoff
from schemas import Breach, BreachKind, BreachState, Evidence, Severity
from tests.unit.alerts.conftest import HOOK_PATH, HOOK_SECRETS, Hook
from tests.unit.alerts.factories import make_breach


def received(breach: Breach, delivery_count: int = 1) -> ReceivedAlert:
    now = datetime(2026, 11, 22, tzinfo=UTC)
    return ReceivedAlert(
        breach=breach,
        message_id=breach.message_id,
        delivery_count=delivery_count,
        lock_token="token",
        enqueued_time=now,
        locked_until=now,
    )


# --- console -------------------------------------------------------------------------------


def test_render_breach_shows_what_a_person_needs() -> None:
    line = render_breach(make_breach(3, severity=Severity.CRITICAL))
    assert line.plain == (
        "2026-11-22 02:00:00+0000  CRITICAL  opened     chat-bot  latency_ms  latency  "
        "observed 1234.5 vs threshold 800 (baseline 400)  detectors slo_burn_rate  "
        "breach breach-00003"
    )
    severity_styles = {
        str(span.style) for span in line.spans if "CRITICAL" in line.plain[span.start : span.end]
    }
    assert severity_styles == {"bold red"}


def test_render_resolved_breach_uses_the_resolution_time() -> None:
    breach = make_breach(3, state=BreachState.RESOLVED).model_copy(
        update={"resolved_at": datetime(2026, 11, 22, 3, 30, tzinfo=UTC), "threshold": None}
    )
    plain = render_breach(breach).plain
    assert plain.startswith("2026-11-22 03:30:00+0000  WARNING   resolved")
    assert "vs threshold -" in plain


def test_render_escalated_incident_shows_the_detectors_that_agree() -> None:
    opened = make_breach(3)
    evidence = [
        Evidence(
            detector=name,
            kind=BreachKind.DRIFT if name != "burn_critical" else BreachKind.LATENCY,
            severity=Severity.CRITICAL if name == "burn_critical" else Severity.WARNING,
            observed=1234.5,
            at=opened.opened_at + timedelta(minutes=minute),
        )
        for minute, name in enumerate(["adwin", "ks", "burn_critical"])
    ]
    escalated = opened.model_copy(
        update={
            "state": BreachState.ESCALATED,
            "severity": Severity.CRITICAL,
            "window_end": evidence[-1].at,
            "evidence": evidence,
        }
    )
    plain = render_breach(escalated).plain
    assert plain.startswith("2026-11-22 02:02:00+0000  CRITICAL  escalated  chat-bot")
    assert "detectors adwin+ks+burn_critical  breach breach-00003" in plain


async def test_console_handler_prints_one_line_per_alert() -> None:
    out = io.StringIO()
    handler = ConsoleHandler(Console(file=out, width=300, highlight=False))
    await handler.handle(received(make_breach(1)))
    await handler.handle(received(make_breach(2)))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[1].endswith("breach breach-00002")


async def test_a_producers_control_characters_reach_no_terminal() -> None:
    # A score's name is the producer's text: an escape sequence in it is printed escaped.
    breach = make_breach(4).model_copy(update={"signal": "score:\x1b[2J\x1b]0;t\x07[/]\n"})
    out = io.StringIO()
    await ConsoleHandler(Console(file=out, width=300, highlight=False)).handle(received(breach))
    printed = out.getvalue()
    assert "\x1b" not in printed and "\x07" not in printed
    assert printed.count("\n") == 1
    assert "score:\\x1b[2J\\x1b]0;t\\x07[/]\\x0a" in printed


async def test_console_handler_json_lines_are_the_breach() -> None:
    out = io.StringIO()
    handler = ConsoleHandler(json_lines=True, stream=out)
    breaches = [make_breach(1), make_breach(2, severity=Severity.CRITICAL)]
    for breach in breaches:
        await handler.handle(received(breach))
    lines = out.getvalue().splitlines()
    assert [Breach.model_validate_json(line) for line in lines] == breaches
    assert json.loads(lines[1])["severity"] == "critical"


# --- webhook -------------------------------------------------------------------------------


def webhook(url: str, max_attempts: int = 3, **kw: object) -> WebhookHandler:
    """A webhook handler making ``max_attempts`` requests per delivery, quickly."""
    backoff = Backoff(initial_s=0.01, max_s=0.05, jitter=False, max_retries=max_attempts - 1)
    return WebhookHandler(url, backoff=backoff, **kw)  # type: ignore[arg-type]


def assert_no_hook_secret(*texts: str) -> None:
    for text in texts:
        for secret in HOOK_SECRETS:
            assert secret not in text, text


def our_log(caplog: pytest.LogCaptureFixture) -> str:
    """The lines the handler and the retry loop logged: not the test server's access log, nor
    httpx's request lines (which ``evalstream.logs.configure`` keeps out, tested there)."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if not record.name.startswith(("aiohttp", "httpx", "httpcore"))
    )


@pytest.mark.integration
async def test_webhook_posts_the_breach_json_with_its_message_id(hook: Hook) -> None:
    breach = make_breach(1)
    async with webhook(hook.url) as handler:
        await handler.handle(received(breach, delivery_count=2))
    [(headers, body)] = hook.requests
    assert Breach.model_validate_json(body) == breach
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Evalstream-Message-Id"] == breach.message_id
    assert headers["Idempotency-Key"] == breach.message_id
    assert headers["X-Evalstream-Delivery-Count"] == "2"


@pytest.mark.integration
async def test_webhook_retries_5xx_and_429_within_one_delivery(hook: Hook) -> None:
    hook.statuses.extend([503, 429, 502])
    async with webhook(hook.url, max_attempts=4) as handler:
        await handler.handle(received(make_breach(1)))
    assert len(hook.requests) == 4


@pytest.mark.integration
async def test_webhook_does_not_retry_4xx(hook: Hook) -> None:
    hook.statuses.extend([404, 404])
    async with webhook(hook.url, max_attempts=3) as handler:
        with pytest.raises(WebhookRejectedError) as caught:
            await handler.handle(received(make_breach(1)))
    assert len(hook.requests) == 1
    assert caught.value.status_code == 404
    assert caught.value.retryable is False
    # The host is named, the path (the hook's credential) is not, nor the answer quoting it.
    assert str(caught.value).startswith("POST http://127.0.0.1:")
    assert "answered 404: status 404 for POST <redacted>" in str(caught.value)
    assert_no_hook_secret(str(caught.value))


@pytest.mark.integration
async def test_webhook_raises_when_every_attempt_fails(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    hook.statuses.extend([500, 500, 500, 500])
    async with webhook(hook.url, max_attempts=3) as handler:
        with caplog.at_level(logging.DEBUG), pytest.raises(AlertDeliveryError) as caught:
            await handler.handle(received(make_breach(1)))
    assert len(hook.requests) == 3
    assert (caught.value.status_code, caught.value.retryable) == (500, True)
    assert "answered 500" in str(caught.value)
    # Each retried attempt was logged, with the same redacted text.
    retried = [record for record in caplog.records if record.name == "common.retry"]
    assert len(retried) == 2
    assert_no_hook_secret(str(caught.value), our_log(caplog))


@pytest.mark.integration
async def test_a_webhook_host_that_does_not_resolve_is_named_without_the_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # .invalid never resolves (RFC 6761): at once, or after the timeout on a machine whose
    # resolver cannot be reached.
    url = f"https://hooks.evalstream.invalid{HOOK_PATH}"
    async with webhook(url, max_attempts=2, timeout_s=5.0) as handler:
        with caplog.at_level(logging.DEBUG), pytest.raises(AlertDeliveryError) as caught:
            await handler.handle(received(make_breach(1)))
    assert isinstance(caught.value.__cause__, httpx.ConnectError | httpx.ConnectTimeout)
    assert str(caught.value).startswith("POST https://hooks.evalstream.invalid/<sha256:")
    assert "common.retry" in {record.name for record in caplog.records}
    assert_no_hook_secret(str(caught.value), our_log(caplog))


@pytest.mark.integration
async def test_webhook_retries_timeouts(hook: Hook) -> None:
    # An answer far later than the timeout, and a timeout long enough for each request to
    # reach the server on a loaded machine (at 0.1 s one sometimes timed out before it did).
    hook.delay_s = 2.0
    async with webhook(hook.url, max_attempts=2, timeout_s=1.0) as handler:
        with pytest.raises(AlertDeliveryError) as caught:
            await handler.handle(received(make_breach(1)))
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    assert caught.value.retryable is True
    await_requests = asyncio.get_running_loop().time() + 5
    while len(hook.requests) < 2:  # the server may see the second request a moment later
        assert asyncio.get_running_loop().time() < await_requests
        await asyncio.sleep(0.01)
    assert len(hook.requests) == 2


@pytest.mark.integration
async def test_webhook_retries_connection_errors() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on that port now: every attempt is refused.
    async with webhook(f"http://127.0.0.1:{port}{HOOK_PATH}", max_attempts=3) as handler:
        with pytest.raises(AlertDeliveryError) as caught:
            await handler.handle(received(make_breach(1)))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert caught.value.retryable is True
    assert str(caught.value).startswith(f"POST http://127.0.0.1:{port}/<sha256:")
    assert_no_hook_secret(str(caught.value))


def test_webhook_rejects_non_http_urls() -> None:
    with pytest.raises(ValueError, match="http"):
        WebhookHandler("ftp://example.org/hook")


@pytest.mark.parametrize(
    "url",
    [
        f"ftp://hooks.example.com{HOOK_PATH}",
        f"hooks.example.com{HOOK_PATH}",
        f"https://{HOOK_PATH}",
    ],
)
def test_a_refused_webhook_url_is_named_without_its_path(url: str) -> None:
    with pytest.raises(ValueError, match="webhook URL") as caught:
        WebhookHandler(url)
    assert_no_hook_secret(str(caught.value))


@pytest.mark.integration
async def test_listener_forwards_through_a_failing_webhook_until_it_recovers(
    hook: Hook, tmp_path: Path
) -> None:
    spec = SubscriptionSpec("hooks", max_delivery_count=3)
    hook.statuses.extend([500, 500])  # the whole first delivery (2 attempts) fails
    out = io.StringIO()
    async with (
        SqliteAlertPublisher(tmp_path / "alerts.db", [spec]) as pub,
        SqliteAlertReceiver(tmp_path / "alerts.db", spec, poll_interval_s=0.01) as rx,
        webhook(hook.url, max_attempts=2) as forward,
    ):
        chain = HandlerChain([forward, ConsoleHandler(json_lines=True, stream=out)])
        subscriber = AlertListener(
            rx, chain, max_delivery_count=3, receive_wait_s=0.05, backoff=Backoff(initial_s=0.01)
        )
        task = asyncio.create_task(subscriber.run())
        await pub.publish([make_breach(1)])
        deadline = asyncio.get_running_loop().time() + 10
        while subscriber.completed < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        subscriber.stop()
        await asyncio.wait_for(task, 5)
    delivery_counts = [headers["X-Evalstream-Delivery-Count"] for headers, _ in hook.requests]
    assert delivery_counts == ["1", "1", "2"]
    # Printed once: only after the webhook accepted it.
    assert len(out.getvalue().splitlines()) == 1
