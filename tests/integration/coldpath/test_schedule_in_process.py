"""``evalstream process`` with the cold path scheduled in process: policies the metric
catalogue refuses stop it at start; not scheduled, they are a warning at start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TYPO = """
[[coldpath.policies]]
name = "speed"
window = "PT1H"
lateness = "PT0S"
[[coldpath.policies.metrics]]
metric = "latenzy"
"""
ENV = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
REFUSED = (
    "coldpath.policies[0].metrics[0].metric: unknown metric 'latenzy' "
    "(known: drift, errors, latency, scores, text.coherence, text.f1, text.fluency, "
    "text.groundedness, text.relevance, text.rouge, usage)"
)


def process(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "evalstream.toml"
    path.write_text(config)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "evalstream",
            "process",
            "--config",
            str(path),
            "--data-dir",
            str(tmp_path / "data"),
            "--no-ingest",
            "--workers",
            "1",
            *args,
        ],
        env={**ENV, "EVALSTREAM_PROCESSOR__HOT_PATH": "false", "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("header", "args"),
    [
        ("[coldpath]\nschedule_in_process = true\n", ("--until-idle", "0.5")),
        # The default under --simulate: before, the processor ran on, saying only
        # "cold path: not scheduled (...)" in a status line, and never stopped.
        ("", ("--simulate", "--rate", "5")),
    ],
    ids=["configured", "simulating"],
)
def test_policies_the_catalogue_refuses_stop_the_processor_at_start(
    tmp_path: Path, header: str, args: tuple[str, ...]
) -> None:
    done = process(tmp_path, header + TYPO, *args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {REFUSED}"], done.stderr


def test_policies_the_catalogue_refuses_are_a_warning_when_not_scheduled(tmp_path: Path) -> None:
    done = process(
        tmp_path, "[coldpath]\nschedule_in_process = false\n" + TYPO, "--until-idle", "0.5"
    )
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stderr.splitlines() if " WARNING " in line]
    assert f"cold path policies refused ({REFUSED}): not scheduled in this process" in warning
