"""``evalstream process``, ``send`` and ``simulate`` on the Azure backend with a setting that
names something missing or unreachable (Event Hubs on the AMQP test broker, checkpoints in
Azurite, Cosmos on cosmosdb-server): one ``error:`` line naming the setting and a non-zero exit
in bounded time, never ``stopped`` with exit 0 nor a retry every few seconds for ever."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.npm_fixtures import CosmosServer
from tests.integration.azure.cli import azure_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

UNREACHABLE_NAMESPACE = (
    "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=a2V5;"
    "UseDevelopmentEmulator=true;EntityPath={hub}"
)
# Bounds far below what the old behaviour took (for ever, or 88 s for an unreachable
# checkpoint account), above what the SDKs' own retries take (~13 s against the broker).
BOUND_S = 75


@pytest.fixture
def env(amqp_broker: Any, azurite: Any, cosmos_server: CosmosServer) -> dict[str, str]:
    """A working Azure configuration of its own hub, topic, container and database."""
    name = f"miscli-{uuid.uuid4().hex[:10]}"
    amqp_broker.create_hub(name, 2)
    amqp_broker.create_topic(f"{name}-breaches")
    clean = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    return {
        **clean,
        "COLUMNS": "300",
        **azure_env(
            amqp_broker, azurite, cosmos_server, hub=name, database=name, topic=f"{name}-breaches"
        ),
    }


def run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_together(tmp_path, [(env, list(args))])[0]


def run_together(
    tmp_path: Path, runs: list[tuple[dict[str, str], list[str]]]
) -> list[subprocess.CompletedProcess[str]]:
    """Commands run side by side: those meeting an unreachable service spend their time in the
    SDKs' backoff, which needs no CPU."""
    (tmp_path / "events.ndjson").write_text('{"app_id": "a"}\n')
    started = [
        (
            args,
            subprocess.Popen(
                [sys.executable, "-m", "evalstream", *args],
                env=env,
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for env, args in runs
    ]
    results = []
    try:
        for args, child in started:
            stdout, stderr = child.communicate(timeout=BOUND_S)
            results.append(subprocess.CompletedProcess(args, child.returncode, stdout, stderr))
    finally:
        for _, child in started:
            if child.poll() is None:
                child.kill()
                child.communicate()
    return results


def the_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one ``error:`` line of a failed command, checked to be all it said of the failure."""
    output = result.stderr + result.stdout
    assert result.returncode != 0, output
    assert "Traceback" not in output and "<?xml" not in output, output
    assert "stopped:" not in output, output  # never reported as a clean stop
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    # Nothing of the error's own text on further lines (the SDKs' "Error condition: ...").
    assert not [line for line in result.stderr.splitlines() if line.startswith(" ")], output
    return errors[0]


def test_a_missing_event_hub_ends_process_at_start_with_exit_2(
    tmp_path: Path, env: dict[str, str]
) -> None:
    hub = "no-such-hub"
    connection = env["EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING"]
    env["EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING"] = connection.replace(
        f"EntityPath={env['EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME']}", f"EntityPath={hub}"
    )
    env["EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME"] = hub
    for args in (["process", "--no-ingest"], ["process", "--no-ingest", "--until-idle", "2"]):
        result = run(tmp_path, env, *args)
        error = the_error(result)
        assert result.returncode == 2, result.stderr
        assert f"event hub {hub!r} does not exist" in error, error
        # Asked once, before the start line (the SDK retried the 404 for ~10 s at the start
        # line, then ~15 s again in the receiver).
        assert "partition positions read failed" in error, error
        assert "evalstream processor:" not in result.stderr, result.stderr
        assert "azure.eventhubs.eventhub_name" in error, error
        assert "azure.eventhubs.connection_string" in error, error
        # The SDK's load-balancing loop reported it as a warning every round, for ever.
        assert " WARNING " not in result.stderr, result.stderr


def test_an_unreachable_namespace_or_checkpoint_store_is_never_idle_with_until_idle(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # Received in this process: the start fails once (a receiver child would be started again
    # five times before the run gives up, as it does when the namespace is down).
    env["EVALSTREAM_AZURE__EVENTHUBS__RECEIVE_IN_CHILD_PROCESS"] = "false"
    hub = env["EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME"]
    no_namespace = {
        **env,
        "EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING": UNREACHABLE_NAMESPACE.format(hub=hub),
    }
    connection = env["EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING"]
    start = connection.index("BlobEndpoint=")
    end = connection.index(";", start)
    no_store = {
        **env,
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING": (
            connection[:start]
            + "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1"
            + connection[end:]
        ),
    }
    args = ["process", "--no-ingest", "--until-idle", "2"]
    namespace, store = run_together(tmp_path, [(no_namespace, args), (no_store, args)])
    error = the_error(namespace)
    assert "Connect call failed" in error, error
    assert "namespace 127.0.0.1:1 of azure.eventhubs.connection_string" in error, error
    error = the_error(store)
    assert "Connect call failed" in error, error
    assert "azure.eventhubs.checkpoint_connection_string" in error, error


@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        (
            "CHECKPOINT_CONNECTION_STRING",
            lambda cs: cs.replace("AccountKey=Eby8", "AccountKey=AAAA"),
            "403 AuthorizationFailure: Server failed to authenticate the request.",
        ),
        ("CHECKPOINT_CONTAINER", lambda _: "ab", "400 OutOfRangeInput: The specified resource"),
    ],
)
def test_a_refused_checkpoint_store_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, env: dict[str, str], setting: str, value: Any, says: str
) -> None:
    name = f"EVALSTREAM_AZURE__EVENTHUBS__{setting}"
    env[name] = value(env[name])
    result = run(tmp_path, env, "process", "--no-ingest", "--until-idle", "2")
    error = the_error(result)
    assert result.returncode == 2, result.stderr
    assert says in error, error
    assert "azure.eventhubs.checkpoint_container" in error, error
    assert "azure.eventhubs.checkpoint_connection_string" in error, error


@pytest.mark.parametrize("fault", ["missing hub", "unreachable namespace"])
def test_send_and_simulate_to_a_missing_or_unreachable_hub_say_it_in_one_line(
    tmp_path: Path, env: dict[str, str], fault: str
) -> None:
    hub = env["EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME"]
    if fault == "missing hub":
        hub = "no-such-hub"
        env["EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING"] = (
            env["EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING"].rsplit("EntityPath=", 1)[0]
            + f"EntityPath={hub}"
        )
        env["EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME"] = hub
    else:
        env["EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING"] = UNREACHABLE_NAMESPACE.format(
            hub=hub
        )
    commands = [["send", "events.ndjson"], ["simulate", "--count", "3", "--no-pace"]]
    for result in run_together(tmp_path, [(env, command) for command in commands]):
        error = the_error(result)
        if fault == "missing hub":
            # At the sink's open, asked once (the SDK retried each send's 404 for ~15 s).
            assert f"Event Hubs open failed: event hub {hub!r} does not exist" in error, error
        else:
            assert "namespace 127.0.0.1:1 of azure.eventhubs.connection_string" in error, error


def test_a_missing_alert_topic_ends_process_at_start_with_exit_2(
    tmp_path: Path, env: dict[str, str]
) -> None:
    """As ``alerts listen`` says a missing subscription at start; before, process started and
    retried its first breach's publish for ever (the test broker refuses a sender's attach to
    a missing topic with an attach and a detach, which the SDK's sender only meets at a send)."""
    env["EVALSTREAM_AZURE__SERVICEBUS__TOPIC"] = "no-such-topic"
    result = run(tmp_path, env, "process", "--no-ingest", "--until-idle", "2")
    error = the_error(result)
    assert result.returncode == 2, result.stderr
    assert "Service Bus topic 'no-such-topic' (azure.servicebus.topic) does not exist" in error
