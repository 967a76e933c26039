"""``evalstream process`` and ``status`` on the Azure backend (Event Hubs on the AMQP test
broker, checkpoints in Azurite, Cosmos on cosmosdb-server): the start line names the hub's
partition count, a SIGTERM to the whole process group is a clean stop, and ``status`` shows
each partition's last sequence, checkpoint and lag."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stream.producers.simulator import Simulator
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_producer import EventHubsSink
from tests.emulators.npm_fixtures import CosmosServer
from tests.integration.azure.cli import azure_env, cosmos_database, telemetry_count, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START = datetime(2026, 11, 21, tzinfo=UTC)
PARTITIONS = 3  # neither the setting's default (4) nor the embedded log's (8)


@pytest.fixture
def database(cosmos_server: CosmosServer) -> Iterator[str]:
    yield from cosmos_database(cosmos_server, "ehcli")


def test_process_names_the_hubs_partitions_stops_cleanly_on_sigterm_and_status_shows_them(
    tmp_path: Path, amqp_broker: Any, azurite: Any, cosmos_server: CosmosServer, database: str
) -> None:
    hub = database
    amqp_broker.create_hub(hub, PARTITIONS)
    amqp_broker.create_topic(f"{hub}-breaches")
    env = {
        **os.environ,
        **azure_env(
            amqp_broker, azurite, cosmos_server, hub=hub, database=database, topic=f"{hub}-breaches"
        ),
    }
    events = list(Simulator(apps=16, rate=10.0, seed=5, start=START).events(90))
    settings = EventHubsSettings(
        connection_string=SecretStr(amqp_broker.eventhubs_connection_string(hub)),
        eventhub_name=hub,
    )

    async def send() -> None:
        async with EventHubsSink(settings) as sink:
            await sink.append([(event.app_id, event.body) for event in events])

    asyncio.run(send())
    valid = sum(1 for event in events if event.valid)
    last = {str(p): amqp_broker.events(hub, str(p))[-1].sequence_number for p in range(PARTITIONS)}

    output = tmp_path / "process.out"
    with open(output, "wb") as handle:
        # Its own process group, as a service manager starts it: the group gets the SIGTERM.
        process = subprocess.Popen(
            [sys.executable, "-m", "evalstream", "process", "--no-ingest"],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: telemetry_count(cosmos_server, database) == valid, "events stored", output)
        os.killpg(process.pid, signal.SIGTERM)
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    said = output.read_text()
    assert code == 0, said
    assert f"backend azure, event hub {hub}, {PARTITIONS} partitions;" in said, said
    assert "data in" not in said
    # The receiver child left the stop to its parent: no crash, no restart, final checkpoints.
    assert "receiver process" not in said and "Traceback" not in said, said
    assert said.count("partition closed") == PARTITIONS, said
    assert "reason=ownership_lost" not in said, said

    status = subprocess.run(
        [sys.executable, "-m", "evalstream", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[1:] == [
        f"partition {p}: last {last[str(p)]} checkpoint {last[str(p)]} lag 0"
        for p in range(PARTITIONS)
    ], status.stdout
