"""What a replay says it did with the events: a shadow job stores nothing, so its progress
bar, completion line and report count them as valid and invalid, never as stored or
quarantined; a job that stores counts them as such."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.integration.replay.harness import evalstream

pytestmark = pytest.mark.integration

WINDOW = ("--from", "2026-12-01", "--to", "2026-12-09")


def four_lines(path: Path) -> Path:
    """Three valid events and a line that is not JSON."""
    valid = [
        orjson.dumps(
            {
                "app_id": "a",
                "timestamp": f"2026-12-0{day}T10:00:00Z",
                "trace_id": f"t{day}",
                "status": "ok",
                "latency_ms": 100.0,
            }
        )
        for day in (2, 3, 4)
    ]
    path.write_bytes(b"\n".join([*valid, b"{not json"]) + b"\n")
    return path


def replayed(data_dir: Path, events: Path, *args: str) -> tuple[str, dict[str, object]]:
    """The command's output and its report's event counts."""
    done = evalstream(
        "replay", "--data-dir", str(data_dir), "--id", "job", *WINDOW, str(events), *args,
        env={"COLUMNS": "200"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = orjson.loads((data_dir / "replays" / "job.json").read_bytes())
    return done.stdout + done.stderr, report["events"]


def test_a_shadow_replay_counts_valid_and_invalid_events_and_stores_none(
    tmp_path: Path,
) -> None:
    output, events = replayed(tmp_path / "data", four_lines(tmp_path / "four.ndjson"))
    # Nothing stored, and said so: the progress bar and the completion line.
    assert not list((tmp_path / "data").glob("store.db*"))
    assert "stored" not in output.replace("(none stored)", ""), output
    assert "quarantined" not in output, output
    assert "reading" in output and "3 valid, 1 invalid (none stored), 0 breach" in output, output
    assert "complete: 3 valid, 1 invalid (none stored), 0 breach messages" in output, output
    assert events == {"valid": 3, "invalid": 1, "invalid_by_code": {"malformed_json": 1}}


def test_a_replay_that_stores_counts_stored_and_quarantined_events(tmp_path: Path) -> None:
    output, events = replayed(
        tmp_path / "data", four_lines(tmp_path / "four.ndjson"), "--mode", "both"
    )
    assert list((tmp_path / "data").glob("store.db"))
    assert "complete: 3 stored, 1 quarantined, 0 breach messages" in output, output
    assert events == {"stored": 3, "quarantined": 1, "quarantined_by_code": {"malformed_json": 1}}
