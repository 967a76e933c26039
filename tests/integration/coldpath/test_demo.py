"""`make run`'s demo: the processor's in-process cold path evaluates the one-minute `demo`
windows of simulated traffic and reports the scripted incident as an evaluation breach, while
the healthy apps stay below the demo's bounds."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.integration


def evalstream(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200", **env},
    )


def test_demo_reports_the_scripted_latency_regression_as_an_evaluation_breach(
    tmp_path: Path,
) -> None:
    # Two full minutes of the demo's traffic that ended a minute ago, app-001 four times
    # slower throughout; stored first, so every window is complete when it is evaluated.
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=4)
    simulated = evalstream(
        tmp_path,
        "simulate",
        "--count", "24000",
        "--start", start.isoformat(),
        "--incident", "latency_regression:app-001@0+120x4",
        "--no-pace",
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr
    stored = evalstream(
        tmp_path, "process", "--no-ingest", "--until-idle", "1",
        EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="false",
        EVALSTREAM_EMBEDDED__WORKERS="1",  # storing only: in this process is enough
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr

    # As `make run` has it: worker processes, the cold path waiting for them to catch up.
    demo = evalstream(
        tmp_path, "process", "--no-ingest", "--until-idle", "3", "--log-format", "json",
        EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="true",
        EVALSTREAM_COLDPATH__SCHEDULE_INTERVAL_S="0.5",
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr
    output = demo.stdout + demo.stderr
    records = [orjson.loads(line) for line in demo.stderr.splitlines() if line.startswith("{")]
    breaches = [r for r in records if r.get("signal") == "demo:latency" and "breach_id" in r]
    assert {r["app"] for r in breaches} == {"app-001"}, output
    assert {r["severity"] for r in breaches} == {"critical"}, output
    assert {r["level"] for r in breaches} == {"WARNING"}, output

    listed = evalstream(tmp_path, "evaluations", "--policy", "demo", "--json")
    assert listed.returncode == 0, listed.stderr
    results = [orjson.loads(line) for line in listed.stdout.splitlines()]
    windows = {r["window"]["start"] for r in results}
    assert {start + timedelta(minutes=m) for m in (0, 1)} <= {
        datetime.fromisoformat(w) for w in windows
    }
    latency = {(r["app_id"], r["window"]["start"]): r for r in results if r["metric"] == "latency"}
    assert {status for (app, _), r in latency.items() if app != "app-001"
            for status in [r["status"]]} == {"ok"}  # fmt: skip
    assert all(r["status"] == "critical" for (app, _), r in latency.items() if app == "app-001")
