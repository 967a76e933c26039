"""``evalstream alerts`` on the Azure backend: the CLI's receiver and publisher wiring
(``wiring.alert_receiver`` / ``wiring.alert_publisher``) against the AMQP test broker's Service Bus.

Entities are named `sbcli-*` (the broker is shared by the whole session).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from alerts.servicebus import correlation_filter
from alerts.servicebus_publisher import ServiceBusAlertPublisher
from evalstream import wiring
from evalstream.cli.alerts import alerts_app
from evalstream.settings import load_settings
from schemas import Breach, Severity
from tests.emulators.amqp.servicebus import ServiceBusAdmin, install
from tests.unit.alerts.factories import make_breach

pytestmark = pytest.mark.integration

TOPIC = "sbcli-breaches"


@pytest.fixture(autouse=True)
def no_evalstream_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("EVALSTREAM_"):
            monkeypatch.delenv(name)
    yield
    gc.collect()  # the SDK's dead connections, see test_servicebus_faults.py


@pytest.fixture(scope="module")
def sb(amqp_broker: Any) -> ServiceBusAdmin:
    return install(amqp_broker)


@pytest.fixture
def config(tmp_path: Path, sb: ServiceBusAdmin) -> Path:
    path = tmp_path / "evalstream.toml"
    path.write_text(
        f"""
backend = "azure"

[azure.servicebus]
connection_string = "{sb.servicebus_connection_string()}"
topic = "{TOPIC}"

[[alerts.subscriptions]]
name = "critical"
filter = {{ severity = "critical" }}
max_delivery_count = 2

[[alerts.subscriptions]]
name = "not-provisioned"
"""
    )
    return path


def test_listen_and_dlq_on_the_azure_backend(sb: ServiceBusAdmin, config: Path) -> None:
    settings = load_settings(config=config)
    critical = next(s for s in settings.alerts.subscriptions if s.name == "critical")
    sb.create_topic(TOPIC)
    sb.create_subscription(
        TOPIC,
        critical.name,
        filter=correlation_filter(critical),
        max_delivery_count=critical.max_delivery_count,
        lock_duration_s=critical.lock_duration_s,
    )
    breaches = [
        make_breach(1, severity=Severity.WARNING),
        make_breach(2, severity=Severity.CRITICAL),
    ]

    async def publish(batch: list[Breach]) -> None:
        async with wiring.alert_publisher(settings) as publisher:
            assert isinstance(publisher, ServiceBusAlertPublisher)
            await publisher.publish(batch)

    asyncio.run(publish(breaches))

    runner = CliRunner()
    listened = runner.invoke(
        alerts_app,
        ["listen", "-s", "critical", "--json", "--max-alerts", "1", "--config", str(config)],
    )
    assert listened.exit_code == 0, listened.output
    [line] = listened.stdout.splitlines()
    assert Breach.model_validate(json.loads(line)) == breaches[1]

    dead = runner.invoke(alerts_app, ["dlq", "-s", "critical", "--config", str(config)])
    assert dead.exit_code == 0, dead.output
    assert "no dead-lettered alerts in subscription 'critical'" in dead.stdout

    missing = runner.invoke(
        alerts_app,
        ["listen", "-s", "not-provisioned", "--max-alerts", "1", "--config", str(config)],
    )
    # Something the operator must fix, as a wrong setting: exit 2 (was 1).
    assert missing.exit_code == 2, missing.output
    assert "'not-provisioned' does not exist on topic 'sbcli-breaches'" in missing.output
    missing_dlq = runner.invoke(
        alerts_app, ["dlq", "-s", "not-provisioned", "--config", str(config)]
    )
    assert missing_dlq.exit_code == 2, missing_dlq.output
    assert "provisioned infrastructure" in missing_dlq.output
