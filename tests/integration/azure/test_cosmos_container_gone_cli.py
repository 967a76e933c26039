"""``evalstream process`` on the Azure backend (Event Hubs on the AMQP test broker, checkpoints
in Azurite, Cosmos on cosmosdb-server) when the telemetry container is deleted while it runs:
the requests ingest accepted are answered, and the command exits 2 with one error line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.cosmos.aio import CosmosClient

from stream.producers.simulator import Simulator
from tests.emulators.npm_fixtures import CosmosServer
from tests.integration.azure.cli import azure_env, cosmos_database, telemetry_count, wait_for
from tests.integration.processor_harness import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

START = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture
def database(cosmos_server: CosmosServer) -> Iterator[str]:
    yield from cosmos_database(cosmos_server, "gonecli")


def delete_telemetry(server: CosmosServer, database: str) -> None:
    async def delete() -> None:
        async with CosmosClient(server.endpoint, server.key) as client:
            await client.get_database_client(database).delete_container("telemetry")

    asyncio.run(delete())


def post(url: str, bodies: list[bytes]) -> int:
    return httpx.post(url, content=b"[" + b",".join(bodies) + b"]", timeout=30).status_code


def test_a_container_deleted_under_process_ends_it_with_one_error_line_and_exit_2(
    tmp_path: Path, amqp_broker: Any, azurite: Any, cosmos_server: CosmosServer, database: str
) -> None:
    hub = database
    amqp_broker.create_hub(hub, 2)
    port = free_port()
    env = {
        **os.environ,
        **azure_env(
            amqp_broker, azurite, cosmos_server, hub=hub, database=database, topic=f"{hub}-breaches"
        ),
        "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.5",
    }
    amqp_broker.create_topic(f"{hub}-breaches")
    simulator = Simulator(apps=4, rate=10.0, seed=11, start=START)
    events = list(simulator.events(80))
    bodies = [event.body for event in events]
    first_valid = sum(1 for event in events[:40] if event.valid)
    output = tmp_path / "process.out"
    url = f"http://127.0.0.1:{port}/api/telemetry"
    with open(output, "wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "evalstream", "process", "--ingest-port", str(port)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    try:
        text = output.read_text
        wait_for(lambda: text().count("partition initialised") == 2, "partitions owned", output)
        assert post(url, bodies[:40]) == 202
        # All stored, so the processor meets the deletion only with the next events.
        wait_for(
            lambda: telemetry_count(cosmos_server, database) == first_valid,
            "first events stored",
            output,
        )

        delete_telemetry(cosmos_server, database)
        assert post(url, bodies[40:]) == 202  # accepted into the hub: not lost
        code = process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    said = output.read_text()
    assert code == 2, said
    errors = [line for line in said.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, said
    assert "container 'telemetry'" in errors[0] and "create it again" in errors[0]
    assert "retry" not in said and "Traceback" not in said, said
