"""``evalstream alerts`` through typer's CliRunner, on the embedded bus in a tmp dir."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from common import redact
from evalstream.cli.alerts import alerts_app, find_subscription
from evalstream.settings import load_settings
from schemas import Breach, Severity
from tests.unit.alerts.conftest import HOOK_PATH, HOOK_SECRETS
from tests.unit.alerts.factories import make_breach


@pytest.fixture(autouse=True)
def no_evalstream_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EVALSTREAM_"):
            monkeypatch.delenv(name)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "evalstream.toml"
    path.write_text(
        f"""
[embedded]
data_dir = "{tmp_path / "data"}"

[[alerts.subscriptions]]
name = "all"

[[alerts.subscriptions]]
name = "critical"
filter = {{ severity = "critical" }}
max_delivery_count = 2
lock_duration_s = 10
"""
    )
    return path


def bus(config: Path) -> Path:
    return load_settings(config=config).embedded.alerts_path


def publish(config: Path, breaches: list[Breach]) -> None:
    settings = load_settings(config=config)

    async def run() -> None:
        async with SqliteAlertPublisher(bus(config), settings.alerts.subscriptions) as pub:
            await pub.publish(breaches)

    asyncio.run(run())


def dead_letter(config: Path, subscription: str, reason: str, description: str) -> None:
    spec = find_subscription(load_settings(config=config), subscription)

    async def run() -> None:
        async with SqliteAlertReceiver(bus(config), spec) as rx:
            [alert] = await rx.receive(1, 0)
            await rx.dead_letter(alert, reason, description)

    asyncio.run(run())


def test_unknown_subscription_lists_the_known_ones(config: Path) -> None:
    for command in ("dlq", "listen"):
        result = CliRunner().invoke(
            alerts_app, [command, "--subscription", "nope", "--config", str(config)]
        )
        assert result.exit_code == 2, result.output
        assert "unknown subscription 'nope'; known subscriptions: all, critical" in result.stderr


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("hooks.example.com/alerts", "webhook URL must be http(s), got"),
        ("ftp://hooks.example.com/alerts", "webhook URL must be http(s), got"),
        ("http://", "webhook URL has no host"),
        ("https:///alerts", "webhook URL has no host"),
        ("http://localhost:99999/alerts", "webhook URL is not valid: Port out of range"),
        ("http://[::1/alerts", "webhook URL is not valid: Invalid IPv6 URL"),
    ],
)
def test_a_webhook_that_cannot_take_posts_is_refused_before_listening(
    config: Path, url: str, said: str
) -> None:
    result = CliRunner().invoke(
        alerts_app,
        ["listen", "-s", "all", "--webhook", url, "--max-alerts", "1", "--config", str(config)],
    )
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.stderr.split()), result.stderr
    assert "listening" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "admin:s3cr3t-pw@hooks.example.com/alerts?sig=s3cr3t-sig",
        "https:/admin:s3cr3t-pw@hooks.example.com/alerts?sig=s3cr3t-sig",
        "ftp://admin:s3cr3t-pw@hooks.example.com/alerts?sig=s3cr3t-sig#s3cr3t",
        "https://admin:s3cr3t-pw@/alerts?sig=s3cr3t-sig",
        # A Slack-style hook: the path is the credential.
        "ftp://hooks.example.com/services/T000/B000/s3cr3t-path",
        "hooks.example.com/services/T000/B000/s3cr3t-path",
    ],
)
def test_a_refused_webhook_url_is_named_without_its_secrets(config: Path, url: str) -> None:
    """Without "//" (a URL typed without its scheme) urlsplit reads the userinfo as a scheme
    and a path, which the error quoted whole."""
    result = CliRunner().invoke(
        alerts_app,
        ["listen", "-s", "all", "--webhook", url, "--max-alerts", "1", "--config", str(config)],
    )
    assert result.exit_code == 2, result.output
    assert "webhook URL" in result.stderr
    assert "s3cr3t" not in result.stderr + result.output


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        alerts_app, ["dlq", "-s", "all", "--config", str(tmp_path / "missing.toml")]
    )
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_dlq_when_empty(config: Path) -> None:
    publish(config, [])  # the bus exists, with nothing dead-lettered
    result = CliRunner().invoke(alerts_app, ["dlq", "-s", "all", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "no dead-lettered alerts in subscription 'all'"


def test_dlq_refuses_a_data_dir_without_a_bus_and_creates_none(config: Path) -> None:
    # Opening it made an empty alerts.db: a mistyped --data-dir showed "no dead letters".
    result = CliRunner().invoke(alerts_app, ["dlq", "-s", "all", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"no alert bus at {bus(config)}" in result.output
    assert not bus(config).parent.exists()


def test_dlq_shows_reason_description_and_breach(config: Path) -> None:
    breach = make_breach(4, severity=Severity.CRITICAL)
    publish(config, [breach])
    dead_letter(config, "critical", "WebhookRejectedError", "POST https://hooks/x answered 404")
    runner = CliRunner()

    result = runner.invoke(alerts_app, ["dlq", "-s", "critical", "--config", str(config)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "WebhookRejectedError  after 1 deliveries  message breach-00004:opened" in lines[0]
    # The path of a webhook URL is its credential: shown as a fingerprint.
    assert lines[1].strip() == f"POST {redact.webhook('https://hooks/x')} answered 404"
    assert "CRITICAL" in lines[2] and "breach breach-00004" in lines[2]
    assert lines[3] == "1 dead-lettered alert(s) in subscription 'critical'"

    result = runner.invoke(alerts_app, ["dlq", "-s", "critical", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    [line] = result.stdout.splitlines()
    entry = json.loads(line)
    assert entry["reason"] == "WebhookRejectedError"
    assert entry["delivery_count"] == 1
    assert Breach.model_validate(entry["breach"]) == breach
    assert entry["raw_base64"] is None

    # The other subscription's dead-letter queue is its own.
    result = runner.invoke(alerts_app, ["dlq", "-s", "all", "--json", "--config", str(config)])
    assert result.stdout == ""


def test_dlq_shows_a_dead_letter_kept_from_before_redaction_without_the_hooks_secrets(
    config: Path,
) -> None:
    """A dead letter written before webhook errors were redacted holds the hook's whole URL
    and the server's echo of its path and query; ``dlq`` shows neither, in either output."""
    url = f"https://hooks.example.com{HOOK_PATH}"
    publish(config, [make_breach(5)])
    description = (
        f"POST {url} answered 500: status 500 for POST {HOOK_PATH} "
        "(handler failed on delivery 5 of 5)"
    )
    dead_letter(config, "all", "AlertDeliveryError", description)
    runner = CliRunner()

    result = runner.invoke(alerts_app, ["dlq", "-s", "all", "--config", str(config)])
    assert result.exit_code == 0, result.output
    shown = result.stdout.splitlines()[1].strip()
    assert shown == (
        f"POST {redact.webhook(url)} answered 500: status 500 for POST <redacted> "
        "(handler failed on delivery 5 of 5)"
    )
    result = runner.invoke(alerts_app, ["dlq", "-s", "all", "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)
    assert entry["description"] == shown
    for secret in HOOK_SECRETS:
        assert secret not in result.stdout

    result = CliRunner().invoke(alerts_app, ["dlq", "--help"])
    help_text = " ".join(result.stdout.replace("│", " ").split())
    assert "shown as its host and a fingerprint of its path" in help_text
    assert "also in dead letters recorded before errors were redacted" in help_text


@pytest.mark.integration
def test_listen_prints_json_lines_and_settles(config: Path) -> None:
    breaches = [make_breach(n) for n in range(3)]
    publish(config, breaches)
    result = CliRunner().invoke(
        alerts_app,
        ["listen", "-s", "all", "--json", "--max-alerts", "2", "--config", str(config)],
    )
    assert result.exit_code == 0, result.output
    printed = [Breach.model_validate_json(line) for line in result.stdout.splitlines()]
    assert printed == breaches[:2]
    assert "listening to subscription 'all'" in result.stderr

    # The two printed alerts were completed; the third is still there for the next listener.
    result = CliRunner().invoke(
        alerts_app, ["listen", "-s", "all", "--max-alerts", "1", "--config", str(config)]
    )
    assert result.exit_code == 0, result.output
    assert "breach breach-00002" in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_help_texts_name_the_options() -> None:
    result = CliRunner().invoke(alerts_app, ["listen", "--help"])
    assert result.exit_code == 0
    for option in ("--subscription", "--json", "--webhook", "--config", "--max-alerts"):
        assert option in result.stdout
    result = CliRunner().invoke(alerts_app, ["dlq", "--help"])
    assert result.exit_code == 0
    assert "dead-lettered alerts" in result.stdout


def test_data_dir_picks_the_embedded_bus_for_dlq_and_listen(config: Path, tmp_path: Path) -> None:
    publish(config, [make_breach(7, severity=Severity.CRITICAL)])
    dead_letter(config, "critical", "WebhookRejectedError", "answered 404")
    elsewhere = tmp_path / "elsewhere"
    runner = CliRunner()

    moved = runner.invoke(
        alerts_app, ["dlq", "-s", "critical", "--config", str(config), "--data-dir", str(elsewhere)]
    )
    # The other data dir is the one read: it has no bus, so nothing is shown (and none made).
    assert moved.exit_code == 2, moved.output
    assert f"no alert bus at {elsewhere / 'alerts.db'}" in moved.output
    assert not elsewhere.exists()

    data_dir = str(bus(config).parent)
    here = runner.invoke(
        alerts_app, ["dlq", "-s", "critical", "--config", str(config), "--data-dir", data_dir]
    )
    assert "breach breach-00007" in here.stdout
    listened = runner.invoke(
        alerts_app,
        ["listen", "-s", "all", "--json", "--max-alerts", "1", "--data-dir", data_dir,
         "--config", str(config)],
    )  # fmt: skip
    assert listened.exit_code == 0, listened.output
    assert json.loads(listened.stdout.splitlines()[0])["breach_id"] == "breach-00007"
