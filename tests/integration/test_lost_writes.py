"""Writes lost under the processor — the last commits of the store, or of the event log, gone
as after a power cut: an older database file put back, or its WAL cut after the header — are
found on start, said in the log, and repaired: what ends up stored equals a run where nothing
was lost (all but processing-time fields)."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from evalstream import wiring
from evalstream.settings import load_settings
from stream.metrics import IngestMetrics, counted
from stream.producers.ingest_server import bound_port, serving
from tests.integration.processor_harness import (
    IN_PROCESS,
    checkpoints,
    kill_hard,
    start_processor,
    stored_count,
    wait_until,
)

pytestmark = pytest.mark.integration

START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


def ndjson(path: Path, first: int, count: int) -> Path:
    """``count`` events of 5 apps, every seventh invalid, numbered from ``first``."""
    lines = []
    for n in range(first, first + count):
        event = {
            "app_id": f"app-{n % 5}",
            "timestamp": (START + timedelta(seconds=n)).isoformat(),
            "trace_id": f"t-{n}",
            "latency_ms": -1 if n % 7 == 0 else 100 + n % 50,
            "user_id": f"user-{n % 13}",
        }
        lines.append(orjson.dumps(event))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def evalstream(data_dir: Path, *args: str, settings: dict[str, str] | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if not key.startswith("EVALSTREAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
        env={
            **env,
            **IN_PROCESS,
            "EVALSTREAM_USER_HASH_KEY": "k",
            "COLUMNS": "300",
            **(settings or {}),
        },
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def process(data_dir: Path, settings: dict[str, str] | None = None) -> str:
    return evalstream(data_dir, "process", "--no-ingest", "--until-idle", "1", settings=settings)


def stored(data_dir: Path) -> tuple[list[dict[str, object]], list[str]]:
    from common.sqlite import sqlite3

    connection = sqlite3.connect(data_dir / "store.db")
    try:
        documents = []
        for (doc,) in connection.execute("SELECT doc FROM telemetry"):
            fields = orjson.loads(doc)
            for processing_time in ("processed_at", "lag_ms"):
                del fields["ingest"][processing_time]
            documents.append(fields)
        quarantine = sorted(row[0] for row in connection.execute("SELECT id FROM quarantine"))
    finally:
        connection.close()
    return sorted(documents, key=lambda d: str(d["id"])), quarantine


def keep_files(data_dir: Path, name: str, into: Path) -> None:
    into.mkdir()
    for path in data_dir.glob(f"{name}*"):
        shutil.copy2(path, into / path.name)


def put_back(kept: Path, data_dir: Path, name: str) -> None:
    for path in data_dir.glob(f"{name}*"):
        path.unlink()
    for path in kept.iterdir():
        shutil.copy2(path, data_dir / path.name)


def sent_twice(tmp_path: Path, data: Path, keep: str, second: int) -> Path:
    """400 events sent and processed, a copy of the data dir's file ``keep`` taken, then
    ``second`` more sent and processed: the copy's folder."""
    evalstream(data, "send", str(ndjson(tmp_path / "a.ndjson", 0, 400)))
    process(data)
    keep_files(data, keep, tmp_path / f"{keep}-then")
    evalstream(data, "send", str(ndjson(tmp_path / "b.ndjson", 400, second)))
    process(data)
    return tmp_path / f"{keep}-then"


def test_a_store_that_lost_its_last_commits_is_caught_up_from_the_log(tmp_path: Path) -> None:
    data, reference = tmp_path / "data", tmp_path / "reference"
    then = sent_twice(tmp_path, data, "store.db", 600)
    shutil.copytree(data, reference)

    put_back(then, data, "store.db")  # the last commits are gone
    before = stored(data)
    assert len(before[0]) < len(stored(reference)[0])
    said = process(data)

    assert "the store lost writes; reading again from sequence" in said
    assert stored(data) == stored(reference)
    assert "lost writes" not in process(data)  # found once, repaired: the next start is quiet


def test_a_store_older_than_the_logs_retention_names_the_events_it_lost_for_good(
    tmp_path: Path,
) -> None:
    """Put back from a copy older than what the log still holds, the store cannot be caught
    up: the start says which sequences are gone and how many events (before, it said only
    "reading again from sequence N", and read on from the oldest event kept)."""
    data = tmp_path / "data"
    then = sent_twice(tmp_path, data, "store.db", 600)
    # Retention of 0.36 s: the next start removes every event processed so far.
    assert "retention removed events" in process(
        data, {"EVALSTREAM_EMBEDDED__RETENTION_HOURS": "0.0001"}
    )

    put_back(then, data, "store.db")
    said = process(data)
    assert "the store lost writes; reading again from sequence" in said
    gone = re.findall(
        r"partition (\d+): sequences (\d+)-(\d+) are no longer in the event log \(retention "
        r"removed them\): the (\d+) events the store lost there cannot be read again",
        said,
    )
    assert gone, said
    assert all(int(n) == int(last) - int(first) + 1 for _, first, last, n in gone)
    # Every event of the second file, on whichever partition its app maps to.
    assert sum(int(n) for *_, n in gone) == 600, said
    # New events are read and stored after the gap; then a start is quiet.
    evalstream(data, "send", str(ndjson(tmp_path / "c.ndjson", 1000, 300)))
    process(data)
    assert "lost" not in process(data)
    documents, _ = stored(data)
    kept = {str(d["trace_id"]) for d in documents}
    assert kept == {f"t-{n}" for n in [*range(400), *range(1000, 1300)] if n % 7}


def test_a_log_that_lost_its_last_events_numbers_new_ones_after_what_was_stored(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    then = sent_twice(tmp_path, data, "log.db", 300)
    heads = checkpoints(data)

    put_back(then, data, "log.db")  # the last appends are gone
    said = process(data)
    assert "the source lost events; new events are numbered after them" in said
    evalstream(data, "send", str(ndjson(tmp_path / "c.ndjson", 700, 300)))
    process(data)

    documents, quarantine = stored(data)
    # Every event of the three files is kept once: none of the new ones was taken for one the
    # detectors or the store had already seen (their numbers would have been reused).
    assert sorted(str(d["trace_id"]) for d in documents) == sorted(
        f"t-{n}" for n in range(1000) if n % 7
    )
    assert len(quarantine) == len([n for n in range(1000) if n % 7 == 0])
    assert all(checkpoints(data)[p] > heads[p] for p in heads)


def http_event(n: int, **fields: object) -> dict[str, object]:
    when = (START + timedelta(seconds=n)).isoformat()
    return {"app_id": f"app-{n % 5}", "timestamp": when, "trace_id": f"h-{n}", **fields}


# Posts with inputs ingest rejects (each with a user id, never to be kept raw), beside valid
# events: (body, content type, content encoding, answer status, rejected inputs).
POSTS = [
    (
        orjson.dumps(
            {
                "events": [
                    http_event(0, user_id="alice"),
                    http_event(1, latency_ms=-1, user_id="bob"),
                    3,
                ]
            }
        ),
        "application/json",
        None,
        207,
        2,
    ),
    (
        orjson.dumps([http_event(2, timestamp="2026-11-22T10:00:00", user_id="carol")]),
        None,
        None,
        422,
        1,
    ),
    (b'{"app_id": "app-1", "user_id": "dave", "trace_id": ', None, None, 400, 1),
    (gzip.compress(orjson.dumps([http_event(3, user_id="erin")]))[:-6], None, "gzip", 400, 1),
    (
        orjson.dumps(http_event(4, user_id="frank"))
        + b"\n"
        + orjson.dumps(http_event(5, status="maybe", user_id="grace")),
        "application/x-ndjson",
        None,
        207,
        1,
    ),
]
USERS = [b"alice", b"bob", b"carol", b"dave", b"erin", b"frank", b"grace"]


async def post_over_http(data_dir: Path) -> float:
    """POSTS to HTTP ingest built as an ingest worker builds it; what it counted as quarantined."""
    settings = load_settings(data_dir=data_dir, user_hash_key="k")
    registry = CollectorRegistry()
    async with wiring.store(settings) as store, wiring.sink(settings) as sink:
        app = wiring.ingest_app(settings, sink, store, IngestMetrics(registry), [])
        async with (
            serving(app.app, "127.0.0.1", 0) as server,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound_port(server)}") as client,
        ):
            for body, content_type, encoding, status, _ in POSTS:
                headers = {"content-type": content_type or "application/json"}
                if encoding is not None:
                    headers["content-encoding"] = encoding
                answer = await client.post("/api/telemetry", content=body, headers=headers)
                assert answer.status_code == status, answer.text
    return counted(registry, "evalstream_ingest_quarantined_events")


async def test_inputs_ingest_rejected_are_kept_when_the_store_loses_its_last_commits(
    tmp_path: Path,
) -> None:
    """Ingest's quarantine records come back like the events when the store is caught up
    from the log: none of them was kept by the store alone."""
    data, reference = tmp_path / "data", tmp_path / "reference"
    evalstream(data, "send", str(ndjson(tmp_path / "a.ndjson", 0, 400)))
    process(data)
    keep_files(data, "store.db", tmp_path / "store-then")
    rejected = sum(post[-1] for post in POSTS)
    assert await post_over_http(data) == rejected  # ingest's own count, as before
    process(data)
    shutil.copytree(data, reference)
    _, quarantine = stored(reference)
    assert len(quarantine) == len([n for n in range(400) if n % 7 == 0]) + rejected

    put_back(tmp_path / "store-then", data, "store.db")  # the last commits are gone
    said = process(data)

    assert "the store lost writes; reading again from sequence" in said
    documents, quarantine = stored(data)
    assert [id_ for id_ in stored(reference)[1] if id_ not in quarantine] == []  # none lost
    assert (documents, quarantine) == stored(reference)
    kept = [path.read_bytes() for path in data.iterdir() if path.name.startswith("log.db")]
    assert not [user for user in USERS for content in kept if user in content]


def cut_wal(database: Path) -> None:
    """Cut the WAL of a database after its 32-byte header, as power lost before any of its
    frames reached the disk: every commit since the last checkpoint is gone."""
    wal = database.with_name(database.name + "-wal")
    assert wal.stat().st_size > 32 * 1024, "nothing in the WAL to lose"
    with wal.open("r+b") as handle:
        handle.truncate(32)
    database.with_name(database.name + "-shm").unlink(missing_ok=True)


# A checkpoint after every batch: the log's checkpoints follow the store closely.
RUNNING = {"EVALSTREAM_USER_HASH_KEY": "k", "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0"}


def checkpointed(data_dir: Path) -> int:
    return sum(sequence + 1 for sequence in checkpoints(data_dir).values())


def killed_once_stored(data_dir: Path, count: int) -> None:
    process = start_processor(data_dir, RUNNING)
    try:
        # Fewer changes than a WAL checkpoint waits for: all of them are still in the WAL.
        wait_until(lambda: stored_count(data_dir) >= count, 120, f"{count} stored records")
        wait_until(lambda: checkpointed(data_dir) >= count // 2, 60, "checkpoints")
    finally:
        kill_hard(process)


def test_a_cut_store_wal_is_caught_up_from_the_log(tmp_path: Path) -> None:
    data, reference = tmp_path / "data", tmp_path / "reference"
    evalstream(data, "send", str(ndjson(tmp_path / "a.ndjson", 0, 3000)))
    shutil.copytree(data, reference)
    process(reference)
    killed_once_stored(data, 1500)

    cut_wal(data / "store.db")
    said = process(data)

    assert "the store lost writes; reading again from sequence" in said
    assert stored(data) == stored(reference)


def test_a_cut_log_wal_numbers_new_events_after_what_was_stored(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # The simulator in the processor appends through the processor's own long-lived log
    # connection: its appends and checkpoints stay in the log's WAL.
    running = start_processor(data, RUNNING, "--simulate", "--rate", "2000", "--seed", "3")
    try:
        wait_until(lambda: stored_count(data) >= 600, 120, "600 stored records")
        wait_until(lambda: checkpointed(data) >= 600, 60, "checkpoints")
    finally:
        kill_hard(running)
    before_documents, before_quarantine = stored(data)

    cut_wal(data / "log.db")
    # Sent before the processor starts again: the sink finds the loss and numbers them after
    # what the store covers (else the processor would skip them as covered).
    said = evalstream(data, "send", str(ndjson(tmp_path / "b.ndjson", 0, 400)))
    process(data)

    documents, quarantine = stored(data)
    # The new events are all kept, next to (not in place of) what was stored before the cut.
    new = [d for d in documents if str(d["trace_id"]).startswith("t-")]
    assert sorted(str(d["trace_id"]) for d in new) == sorted(f"t-{n}" for n in range(400) if n % 7)
    assert len(documents) == len(before_documents) + len(new)
    assert len(quarantine) == len(before_quarantine) + len([n for n in range(400) if n % 7 == 0])
    assert "the log lost events (a power cut?); new events are numbered after them" in said


def test_a_cut_log_wal_numbers_new_events_after_what_was_stored_past_the_snapshot(
    tmp_path: Path,
) -> None:
    """The store holds documents and records the snapshot does not cover yet (checkpoints are
    rare): the numbers of those are not given to new events either — a new invalid event
    would take the quarantine record of an old one at its position."""
    data = tmp_path / "data"
    rare = {**RUNNING, "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "3600"}
    running = start_processor(data, rare, "--simulate", "--rate", "2000", "--seed", "5")
    try:
        wait_until(lambda: stored_count(data) >= 600, 120, "600 stored records")
    finally:
        kill_hard(running)
    _, before_quarantine = stored(data)

    cut_wal(data / "log.db")
    said = evalstream(data, "send", str(ndjson(tmp_path / "b.ndjson", 0, 400)))
    process(data)

    documents, quarantine = stored(data)
    positions = [(d["ingest"]["partition"], d["ingest"]["sequence"]) for d in documents]  # type: ignore[index]
    assert len(set(positions)) == len(positions)
    assert len(quarantine) == len(before_quarantine) + len([n for n in range(400) if n % 7 == 0])
    assert "the log lost events (a power cut?); new events are numbered after them" in said
