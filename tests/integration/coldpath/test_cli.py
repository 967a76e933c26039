"""The coldpath CLI: bad policies refused at start naming the setting (exit 2, one line), and a
re-trigger of an evaluated window is a no-op."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from coldpath.shards import build_manifest
from schemas import EvaluationPolicy, Window
from store.sqlite import SqliteStore
from tests.unit.coldpath.fakes import doc

pytestmark = pytest.mark.integration

HEADER = '[coldpath]\ncatalogue = "tests.unit.coldpath.fakes:CATALOGUE"\nworkers = 2\n'
GOOD = """
[[coldpath.policies]]
name = "speed"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 5
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = { p95 = { warning = { max = 150.0 } } }
"""


def evalstream(
    tmp_path: Path, config: str, *args: str, header: str = HEADER
) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "evalstream.toml"
    path.write_text(header + config)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "evalstream",
            *args,
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        (('metric = "latency"', 'metric = "latenzy"'), "coldpath.policies[0].metrics[0].metric"),
        (("max = 150.0 }", "max = 150.0, min = 200.0 }"), "coldpath.policies[0].metrics[0]"),
        (('window = "PT1H"', 'window = "PT7M"'), "coldpath.policies[0].window"),
    ],
)
def test_bad_policies_are_refused_at_start_naming_the_setting(
    tmp_path: Path, change: tuple[str, str], setting: str
) -> None:
    done = evalstream(tmp_path, GOOD.replace(*change), "coldpath", "trigger")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {setting}"), lines[0]


def test_a_threshold_on_a_value_the_metric_never_reports_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    # Before, the misspelt p959 loaded, ran, and was never judged.
    done = evalstream(
        tmp_path,
        GOOD.replace("p95 =", "p959 ="),
        "coldpath",
        "windows",
        "--policy",
        "speed",
        "--from",
        "2026-03-01T00:00Z",
        "--to",
        "2026-03-01T02:00Z",
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip().splitlines() == [
        "error: coldpath.policies[0].metrics[0].thresholds: policy 'speed', metric 'latency' "
        "has no value 'p959' to judge (its values: p95, mean)"
    ]


def test_a_custom_catalogue_lacking_a_protocol_method_is_one_line_and_exit_2(
    tmp_path: Path,
) -> None:
    # Before: a traceback ending in AttributeError: ... has no attribute 'value_names'.
    outdated = HEADER.replace("fakes:CATALOGUE", "fakes:OUTDATED_CATALOGUE")
    done = evalstream(tmp_path, GOOD, "coldpath", "status", header=outdated)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: coldpath.catalogue: metric 'latency' of "
        "'tests.unit.coldpath.fakes:OUTDATED_CATALOGUE' lacks value_names() (see the Metric "
        "protocol in coldpath.policies.base)"
    ]


def test_run_shard_refuses_a_manifest_file_judging_a_value_no_metric_reports(
    tmp_path: Path,
) -> None:
    # A manifest file carries its own policies: the settings' check never saw them.
    policy = EvaluationPolicy.model_validate(
        {
            "name": "speed",
            "metrics": [{"metric": "latency", "thresholds": {"p959": {"warning": {"max": 1}}}}],
        }
    )
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    window = Window(start=start, end=start + timedelta(hours=1))
    job = build_manifest(window, [policy], ["app-a"], group_size=1, code_version="t", run=0)
    path = tmp_path / "manifest.json"
    path.write_text(job.model_dump_json())
    done = evalstream(
        tmp_path, GOOD, "coldpath", "run-shard", "--manifest", str(path), "--group-index", "0"
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: manifest {job.id} policies[0].metrics[0].thresholds: policy 'speed', metric "
        "'latency' has no value 'p959' to judge (its values: p95, mean)"
    ]


def test_trigger_evaluates_a_window_once_and_evaluations_shows_it(tmp_path: Path) -> None:
    start = datetime(2026, 3, 1, 10, tzinfo=UTC)
    documents = [
        doc("app-a", start + timedelta(minutes=n), latency_ms=100.0 + 10 * n, number=n)
        for n in range(10)
    ] + [doc("app-b", start, number=0)]

    async def write() -> None:
        async with SqliteStore(tmp_path / "data" / "store.db") as store:
            await store.write(documents, [])

    asyncio.run(write())
    window = "2026-03-01T10:00Z/2026-03-01T11:00Z"
    first = evalstream(tmp_path, GOOD, "coldpath", "trigger", "--window", window)
    assert first.returncode == 0, first.stderr
    assert "(2 pending)" in first.stderr
    again = evalstream(tmp_path, GOOD, "coldpath", "trigger", "--window", window)
    assert again.returncode == 0 and "(0 pending)" in again.stderr
    assert again.stderr.split("manifest ")[1][:32] == first.stderr.split("manifest ")[1][:32]

    shown = evalstream(tmp_path, GOOD, "evaluations", "--json")
    results = {r["app_id"]: r for r in map(orjson.loads, shown.stdout.splitlines())}
    assert results["app-a"]["status"] == "warning"
    assert results["app-b"]["status"] == "insufficient_data"
    table = evalstream(tmp_path, GOOD, "evaluations", "--app", "app-a")
    assert "warn>150" in table.stdout
