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
