"""``evalstream alerts``: follow an alert subscription (console, webhook), read its dead letters.

Mounted by the main CLI with ``app.add_typer(alerts_app, name="alerts")``. The bus behind a
subscription is chosen by ``evalstream.wiring.alert_receiver`` from the settings, the one
place that knows the backends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.text import Text

from alerts.config import SubscriptionSpec
from alerts.exceptions import AlertError, UnknownSubscriptionError
from alerts.handlers import (
    ConsoleHandler,
    HandlerChain,
    WebhookHandler,
    render_breach,
    webhook_url_problem,
)
from alerts.listener import AlertListener
from alerts.ports import (
    AlertHandler,
    DeadLetteredAlert,
    ReceivedAlert,
)
from common import redact
from common.errors import Misconfigured, leaves
from common.printable import printable
from evalstream import wiring
from evalstream.cli.options import DataDirOption, existing_store, fail, load, with_logging
from evalstream.settings import Settings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

logger = logging.getLogger(__name__)

alerts_app = typer.Typer(
    name="alerts",
    short_help="Alert subscriptions: listen, dead letters.",
    help=(
        "Follow breach alerts. Breaches (drift, latency, error-rate and evaluation alerts) are "
        "published to a topic; each subscription from the config (\\[\\[alerts.subscriptions]]) "
        "receives the breaches its filter matches. On the embedded backend the topic is the "
        "SQLite file embedded.data_dir/alerts.db."
    ),
    no_args_is_help=True,
    add_completion=False,
)

SubscriptionOption = Annotated[
    str,
    typer.Option(
        "--subscription",
        "-s",
        metavar="NAME",
        help="Subscription to read, by name as configured in \\[\\[alerts.subscriptions]].",
        show_default=False,
    ),
]
BackendOption = Annotated[
    str | None,
    typer.Option(
        "--backend",
        metavar="embedded|azure",
        help="Override the configured backend (embedded SQLite topic or Azure Service Bus).",
    ),
]
ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="PATH",
        help="TOML config file (default: $EVALSTREAM_CONFIG, else the built-in defaults).",
        dir_okay=False,
    ),
]


def find_subscription(settings: Settings, name: str) -> SubscriptionSpec:
    """The configured subscription ``name``; ``UnknownSubscriptionError`` lists the others."""
    specs = {spec.name: spec for spec in settings.alerts.subscriptions}
    if name not in specs:
        raise UnknownSubscriptionError(name, list(specs))
    return specs[name]


def _load(
    config: Path | None, subscription: str, backend: str | None, data_dir: Path | None = None
) -> tuple[Settings, SubscriptionSpec]:
    settings = load(config, data_dir, backend=backend)
    try:
        return settings, find_subscription(settings, subscription)
    except UnknownSubscriptionError as exc:
        raise fail(str(exc)) from exc


def _exit_code(errors: list[BaseException]) -> int:
    return EXIT_USAGE if all(isinstance(error, Misconfigured) for error in errors) else 1


class _StopAfter:
    """Counts handled alerts and stops the listener after ``limit`` of them."""

    def __init__(self, handler: AlertHandler, limit: int) -> None:
        self.handler = handler
        self.limit = limit
        self.handled = 0
        self.listener: AlertListener | None = None

    async def handle(self, alert: ReceivedAlert) -> None:
        await self.handler.handle(alert)
        self.handled += 1
        if self.handled >= self.limit and self.listener is not None:
            self.listener.stop()


async def _listen(
    settings: Settings,
    spec: SubscriptionSpec,
    *,
    json_lines: bool,
    webhook: str | None,
    max_alerts: int | None,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(wiring.alert_receiver(settings, spec))
        handler: AlertHandler = ConsoleHandler(json_lines=json_lines)
        if webhook is not None:
            forward = await stack.enter_async_context(WebhookHandler(webhook))
            # Printed only once forwarded: the console then shows what the webhook got.
            handler = HandlerChain([forward, handler])
        counter = _StopAfter(handler, max_alerts) if max_alerts is not None else None
        listener = AlertListener(
            receiver,
            counter or handler,
            max_delivery_count=spec.max_delivery_count,
            # An exact --max-alerts needs one alert at a time: nothing extra in flight.
            max_concurrency=1 if counter else 8,
            max_in_flight=1 if counter else None,
        )
        if counter is not None:
            counter.listener = listener
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGTERM, listener.stop)
            stack.callback(loop.remove_signal_handler, signal.SIGTERM)
        # A log record, not a console line: with --log-format json stderr holds only JSON.
        logger.info(
            "listening to subscription %r (%s: %s); Ctrl-C to stop",
            spec.name,
            settings.backend,
            _where(settings),
            extra={"subscription": spec.name},
        )
        await listener.run()


def _where(settings: Settings) -> str:
    if settings.backend == "embedded":
        return str(settings.embedded.alerts_path)
    return f"Service Bus topic {settings.azure.servicebus.topic!r}"


def _webhook_url(url: str | None) -> str | None:
    problem = webhook_url_problem(url) if url is not None else None
    if problem is not None:
        raise typer.BadParameter(problem)
    return url


@alerts_app.command(
    help=(
        "Print the alerts of a subscription as they arrive (and optionally forward them)."
        "\n\n"
        "Each alert is settled only after it was printed (and forwarded): an alert whose "
        "handling fails comes back later with backoff, and is dead-lettered after the "
        "subscription's max_delivery_count. Several listeners may share a subscription; "
        "each alert goes to one of them."
    )
)
@with_logging("INFO")
def listen(
    subscription: SubscriptionOption,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object (the Breach) per line, no colours."),
    ] = False,
    webhook: Annotated[
        str | None,
        typer.Option(
            "--webhook",
            metavar="URL",
            callback=_webhook_url,
            help=(
                "Also POST each breach as JSON to this URL (retried on 5xx, 408, 429 and "
                "network errors; after the subscription's max delivery count it is "
                "dead-lettered)."
            ),
        ),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    backend: BackendOption = None,
    max_alerts: Annotated[
        int | None,
        typer.Option(
            "--max-alerts",
            min=1,
            metavar="N",
            help="Exit after N alerts were handled (default: run until Ctrl-C or SIGTERM).",
        ),
    ] = None,
) -> None:
    """Print the alerts of a subscription as they arrive (and optionally forward them)."""
    settings, spec = _load(config, subscription, backend, data_dir)
    try:
        try:
            asyncio.run(
                _listen(
                    settings, spec, json_lines=json_output, webhook=webhook, max_alerts=max_alerts
                )
            )
        except* (AlertError, ValueError) as group:
            # The listener supervises a task group: its errors arrive grouped.
            errors = leaves(group)
            raise fail("; ".join(map(str, errors)), code=_exit_code(errors)) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None


async def _dead_letters(
    settings: Settings, spec: SubscriptionSpec, max_count: int
) -> list[DeadLetteredAlert]:
    async with wiring.alert_receiver(settings, spec, read_only=True) as receiver:
        return await receiver.dead_letters(max_count)


def _dead_letter_json(dead: DeadLetteredAlert) -> bytes:
    return orjson.dumps(
        {
            "message_id": dead.message_id,
            "reason": redact.scrub_urls(dead.reason),
            "description": redact.scrub_urls(dead.description),
            "delivery_count": dead.delivery_count,
            "dead_lettered_at": dead.dead_lettered_at.isoformat(),
            "breach": dead.breach.model_dump(mode="json") if dead.breach is not None else None,
            "raw_base64": base64.b64encode(dead.raw).decode() if dead.raw is not None else None,
        }
    )


@alerts_app.command(
    help=(
        "Show the dead-lettered alerts of a subscription, oldest first, without removing them."
        "\n\n"
        "Each entry says why it was dead-lettered (the handler's error, or "
        "MaxDeliveryCountExceeded when its locks kept expiring), after how many deliveries, "
        "and which breach it carries."
        "\n\n"
        "A URL in a reason or description is shown as its host and a fingerprint of its path "
        "and query (a webhook's path is its credential), and what of it a server's answer "
        "echoed as <redacted>: also in dead letters recorded before errors were redacted. "
        "The stored records are not changed."
    )
)
def dlq(
    subscription: SubscriptionOption,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per dead-lettered alert.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    backend: BackendOption = None,
    max_count: Annotated[
        int, typer.Option("--max", min=1, metavar="N", help="Show at most N, oldest first.")
    ] = 100,
) -> None:
    """Show the dead-lettered alerts of a subscription, oldest first, without removing them."""
    settings, spec = _load(config, subscription, backend, data_dir)
    # Reading only: a mistyped --data-dir made an empty alert bus and showed no dead letters.
    existing_store(settings, settings.embedded.alerts_path, "alert bus")
    try:
        dead_letters = asyncio.run(_dead_letters(settings, spec, max_count))
    except AlertError as exc:
        raise fail(str(exc), code=_exit_code([exc])) from exc
    if json_output:
        for dead in dead_letters:
            sys.stdout.write(_dead_letter_json(dead).decode() + "\n")
        return
    out = Console(highlight=False, soft_wrap=True)
    if not dead_letters:
        out.print(f"no dead-lettered alerts in subscription {spec.name!r}")
        return
    for dead in dead_letters:
        line = Text()
        line.append(dead.dead_lettered_at.strftime("%Y-%m-%d %H:%M:%S%z"), style="dim")
        line.append("  ")
        # The reason and description may quote a webhook's answer or a producer's text.
        line.append(printable(redact.scrub_urls(dead.reason)), style="bold red")
        line.append(f"  after {dead.delivery_count} deliveries  message {dead.message_id}")
        out.print(line)
        if dead.description:
            out.print(Text(f"    {printable(redact.scrub_urls(dead.description))}"))
        if dead.breach is not None:
            out.print(Text("    ").append_text(render_breach(dead.breach)))
        else:
            out.print(Text(f"    unreadable body: {dead.raw!r:.200}"))
    out.print(f"{len(dead_letters)} dead-lettered alert(s) in subscription {spec.name!r}")
