"""The processor and producer commands as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evalstream.settings import DEFAULT_PARTITIONS
from tests.integration.processor_harness import (
    checkpoints,
    start_processor,
    store_contents,
    stored_count,
    stored_documents,
    wait_until,
    worker_pids,
)
from tests.procfs import signal_set

pytestmark = pytest.mark.integration

ENV = {"EVALSTREAM_PROCESSOR__HOT_PATH": "false", "EVALSTREAM_PROCESSOR__BATCH_SIZE": "100"}


def evalstream(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "evalstream", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_schema_prints_the_producer_contract() -> None:
    result = evalstream("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "TelemetryEvent"
    assert "app_id" in schema["required"]


def test_simulate_to_ndjson_is_deterministic() -> None:
    args = (
        "simulate",
        "--count",
        "50",
        "--seed",
        "3",
        "--start",
        "2026-11-22T00:00:00Z",
        "-o",
        "-",
    )
    first, second = evalstream(*args), evalstream(*args)
    assert first.returncode == 0
    lines = first.stdout.splitlines()
    assert len(lines) == 50
    assert first.stdout == second.stdout


def test_send_then_process_stores_valid_and_quarantines_invalid(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    ndjson = "\n".join(
        [
            json.dumps({"app_id": "a1", "timestamp": when, "trace_id": "x1"}),
            "{not json",
            json.dumps({"app_id": "a1", "timestamp": when}),
            "",
            json.dumps({"app_id": "a2", "timestamp": when, "trace_id": "x2", "latency_ms": 5}),
        ]
    ).encode()
    sent = evalstream("send", "-", "--data-dir", str(data_dir), stdin=ndjson)
    assert sent.returncode == 0, sent.stderr.decode()
    assert b"sent 4 events" in sent.stderr
    process = start_processor(data_dir, ENV, "--until-idle", "0.5")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()
    telemetry, quarantine = store_contents(data_dir)
    assert len(telemetry) == 2 and len(quarantine) == 2
    shown = evalstream("quarantine", "--data-dir", str(data_dir))
    assert b"malformed JSON" in shown.stdout
    assert b"$.trace_id: Field required" in shown.stdout


def test_sigterm_finishes_the_batch_and_checkpoints(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    simulated = evalstream(
        "simulate",
        "--data-dir",
        str(data_dir),
        "--count",
        "20000",
        "--no-pace",
        "--seed",
        "5",
        "--start",
        (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    )
    assert simulated.returncode == 0, simulated.stderr.decode()
    process = start_processor(data_dir, ENV, "--log-level", "INFO")  # the status lines are INFO
    wait_until(lambda: stored_count(data_dir) >= 3000, timeout=120, what="3000 stored records")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    assert b"stopped:" in output
    # Exactly what each partition's checkpoint covers is stored (one record per simulated
    # event): the batch in flight was finished and checkpointed, nothing beyond it was written.
    processed = sum(sequence + 1 for sequence in checkpoints(data_dir).values())
    assert stored_count(data_dir) == processed > 0


def catches_sigusr1(pid: int) -> bool:
    """Whether the process has a handler for SIGUSR1 (Linux: its caught-signals mask)."""
    try:
        return signal.SIGUSR1 in signal_set(pid, "SigCgt")
    except FileNotFoundError:  # gone meanwhile (a worker restarting)
        return False


def test_sigusr1_prints_every_threads_stack_and_processing_goes_on(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    simulated = evalstream(
        "simulate", "--data-dir", str(data_dir), "--count", "20000", "--no-pace", "--seed", "5",
        "--start", (datetime.now(UTC) - timedelta(hours=1)).isoformat(),
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr.decode()
    # The supervisor and two worker processes, each asked (a signal to the process group).
    process = start_processor(data_dir, {**ENV, "EVALSTREAM_EMBEDDED__WORKERS": "2"})
    wait_until(lambda: stored_count(data_dir) >= 2000, timeout=120, what="2000 stored records")
    # Until a process has set its handler, SIGUSR1 ends it (a worker still starting, seen).
    wait_until(
        lambda: (
            len(pids := [process.pid, *worker_pids(process)]) == 3
            and all(map(catches_sigusr1, pids))
        ),
        timeout=120,
        what="every process catching SIGUSR1",
    )
    os.killpg(process.pid, signal.SIGUSR1)
    wait_until(lambda: stored_count(data_dir) >= 20000, timeout=120, what="every event stored")
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()
    text = output.decode()
    # One dump per process, each with its threads (the loop's, SQLite's helpers), each going on.
    assert text.count("Current thread 0x") == 3, text
    assert text.count("evalstream/worker.py") >= 2 and "evalstream/cli/process.py" in text, text


def test_second_processor_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = start_processor(data_dir, ENV)
    try:
        wait_until(lambda: (data_dir / "processor.lock").exists(), timeout=60, what="the lock")
        wait_until(
            lambda: (data_dir / "processor.lock").read_text().strip() == str(first.pid),
            timeout=60,
            what="the lock to name the first processor",
        )
        second = start_processor(data_dir, ENV)
        output, _ = second.communicate(timeout=60)
        assert second.returncode != 0
        assert f"another evalstream processor (pid {first.pid})".encode() in output
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)


def test_a_taken_ingest_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = evalstream(
            "process", "--data-dir", str(tmp_path / "data"), "--ingest-port", str(port)
        )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    error_lines = [line for line in output.splitlines() if b"error" in line]
    assert error_lines == [
        f"error: ingest cannot listen on 127.0.0.1:{port}: Address already in use".encode()
    ]
    assert b"Traceback" not in output


def test_log_format_json_gives_only_json_lines_with_component_and_partition(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    event = {"app_id": "a1", "timestamp": when, "trace_id": "x1", "user_id": "u-secret-7"}
    sent = evalstream("send", "-", "--data-dir", str(data_dir), stdin=json.dumps(event).encode())
    assert sent.returncode == 0, sent.stderr.decode()
    # Two worker processes: their log set-up comes over the pipe, their lines must be JSON too.
    process = start_processor(
        data_dir,
        {**ENV, "EVALSTREAM_EMBEDDED__WORKERS": "2"},
        "--until-idle",
        "0.5",
        "--log-format",
        "json",
        "--log-level",
        "INFO",
    )
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()
    lines = [json.loads(line) for line in output.decode().splitlines()]
    assert all({"time", "level", "component", "message"} <= set(line) for line in lines)
    initialised = [line for line in lines if line["message"] == "partition initialised"]
    # Each partition once: the shares are given when both workers have started, not as each
    # one starts (the first took all and handed half over, every partition moving at start).
    assert sorted(line["partition"] for line in initialised) == sorted(
        str(p) for p in range(DEFAULT_PARTITIONS)
    )
    assert lines[-1]["component"] == "evalstream.process"
    assert lines[-1]["message"].startswith("stopped: ")
    assert "stored 1" in lines[-1]["message"]
    assert b"u-secret-7" not in output


def test_send_reads_ndjson_with_a_bom_and_any_line_ending(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    # One file per line ending, three events each, sent to one data dir processed once.
    endings = [b"\r", b"\r\n", b"\n"]
    for n, ending in enumerate(endings):
        lines = [
            json.dumps({"app_id": "a1", "timestamp": when, "trace_id": f"x{n}-{i}"})
            for i in range(3)
        ]
        path = tmp_path / f"events-{n}.ndjson"
        path.write_bytes(b"\xef\xbb\xbf" + ending.join(line.encode() for line in lines) + ending)
        sent = evalstream("send", str(path), "--data-dir", str(data_dir))
        assert sent.returncode == 0, (ending, sent.stderr.decode())
        assert b"sent 3 events" in sent.stderr, (ending, sent.stderr.decode())
    process = start_processor(data_dir, ENV, "--until-idle", "0.5")
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output.decode()
    _, quarantine = store_contents(data_dir)
    assert quarantine == []
    stored = sorted(str(fields["trace_id"]) for fields in stored_documents(data_dir).values())
    assert stored == sorted(f"x{n}-{i}" for n in range(len(endings)) for i in range(3))


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_send_refuses_ndjson_that_is_not_utf8_whole(tmp_path: Path, encoding: str) -> None:
    """Lines split on bytes would cut a wide encoding's characters (and each piece would be
    quarantined apart, its user id unreadable to the scrubber): the file is refused, one line,
    exit 2, before anything is logged."""
    data_dir = tmp_path / "data"
    when = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    text = "".join(
        json.dumps({"app_id": "a1", "timestamp": when, "trace_id": f"w-{i}", "user_id": "wide"})
        + "\n"
        for i in range(2)
    )
    path = tmp_path / "events.ndjson"
    path.write_bytes(text.encode(encoding))
    sent = evalstream("send", str(path), "--data-dir", str(data_dir))
    assert sent.returncode == 2, sent.stderr.decode()
    message = sent.stderr.decode()
    assert "not UTF-8" in message and "Traceback" not in message, message
    assert len(message.strip().splitlines()) == 1, message
    log = data_dir / "log.db"
    assert not log.exists() or b"wide" not in log.read_bytes()
