"""Every command on the Azure backend with a setting missing: one line naming the setting,
exit 2, no traceback — whether the command or an adapter deep inside it finds the gap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COSMOS = "azure.cosmos.endpoint is not set"
SERVICE_BUS = "azure.servicebus.connection_string or azure.servicebus.fully_qualified_namespace"
EVENT_HUBS = "azure.eventhubs needs connection_string or fully_qualified_namespace"
BATCH = "azure.batch.account_url"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["status"], COSMOS),
        (["quarantine"], COSMOS),
        (["process", "--no-ingest"], COSMOS),
        (["send", "events.ndjson"], EVENT_HUBS),
        (["alerts", "listen", "--subscription", "all"], SERVICE_BUS),
        (["alerts", "dlq", "--subscription", "all"], SERVICE_BUS),
        (["evaluations"], COSMOS),
        (["report", "-o", "report.html"], COSMOS),
        (["coldpath", "trigger", "--executor", "batch"], BATCH),
        (["coldpath", "status", "job-1"], BATCH),
        (
            ["coldpath", "backfill", "--from", "2026-12-01T00:00Z", "--to", "2026-12-01T01:00Z"],
            COSMOS,
        ),
    ],
)
def test_a_missing_azure_setting_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], names: str
) -> None:
    (tmp_path / "events.ndjson").write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *args],
        env={**env, "EVALSTREAM_BACKEND": "azure", "COLUMNS": "300"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and names in errors[0], result.stderr


NOT_A_CONNECTION_STRING = "this is not a connection string"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@pytest.mark.parametrize(
    ("setting", "value", "args"),
    [
        ("azure.eventhubs.connection_string", "", ["process", "--no-ingest"]),
        ("azure.eventhubs.connection_string", NOT_A_CONNECTION_STRING, ["process", "--no-ingest"]),
        ("azure.eventhubs.connection_string", NOT_A_CONNECTION_STRING, ["send", "events.ndjson"]),
        (
            "azure.eventhubs.connection_string",
            "Endpoint=sb://host/;SharedAccessKeyName=k",
            ["status"],
        ),
        ("azure.eventhubs.checkpoint_connection_string", "", ["process", "--no-ingest"]),
        (
            "azure.eventhubs.checkpoint_connection_string",
            "AccountName=a;AccountKey=not base64!",
            ["process", "--no-ingest"],
        ),
        ("azure.servicebus.connection_string", NOT_A_CONNECTION_STRING, ["process", "--no-ingest"]),
        ("azure.servicebus.connection_string", "", ["alerts", "dlq", "--subscription", "all"]),
        ("azure.cosmos.key", "", ["status"]),
        ("azure.cosmos.endpoint", "", ["status"]),
        ("azure.batch.account_key", "", ["coldpath", "status", "job-1"]),
        ("azure.batch.staging.connection_string", NOT_A_CONNECTION_STRING, ["coldpath", "trigger"]),
        ("replay.capture.connection_string", "", ["status"]),
    ],
)
def test_a_malformed_azure_connection_setting_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, setting: str, value: str, args: list[str]
) -> None:
    """The SDKs take any text and fail only when a client is made (a traceback ending in
    ``ValueError: Connection string is either blank or malformed.``): refused on load."""
    (tmp_path / "events.ndjson").write_text("")
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    # Every other setting usable (nothing listens there: the refusal must come first).
    usable = {
        "EVALSTREAM_AZURE__EVENTHUBS__CONNECTION_STRING": (
            "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=a2V5"
        ),
        "EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME": "telemetry",
        "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
        ),
        "EVALSTREAM_AZURE__COSMOS__ENDPOINT": "https://127.0.0.1:1/",
        "EVALSTREAM_AZURE__COSMOS__KEY": AZURITE_KEY,
        "EVALSTREAM_AZURE__SERVICEBUS__CONNECTION_STRING": (
            "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=a2V5"
        ),
        "EVALSTREAM_USER_HASH_KEY": "test-key",
    }
    name = "EVALSTREAM_" + setting.upper().replace(".", "__")
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *args],
        env={**env, **usable, name: value, "EVALSTREAM_BACKEND": "azure", "COLUMNS": "300"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    output = result.stderr + result.stdout
    assert "Traceback" not in output
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0]], result.stderr
    assert result.stderr.startswith(f"error: {setting}: "), result.stderr
    assert "not base64!" not in output and "a2V5" not in output
