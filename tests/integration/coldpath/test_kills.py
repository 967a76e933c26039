"""Must-show 2: a backfill over 50 apps × 2 policies × 3 windows on the local executor, with
shard workers and the trigger SIGKILLed at seeded random points, ends with exactly the results
and breaches of an uninterrupted run: one result per (app, policy, window, metric), one
published message per breach id."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from common.sqlite import sqlite3
from store.sqlite import SqliteStore
from tests.unit.coldpath.fakes import doc

pytestmark = pytest.mark.integration

APPS = 50
START = datetime(2026, 3, 1, 0, tzinfo=UTC)
HOURS = 3
CONFIG = """
[coldpath]
catalogue = "tests.unit.coldpath.fakes:CATALOGUE"
group_size = 25
workers = 2
shard_retries = 20
shard_backoff_s = 0.05

[[coldpath.policies]]
name = "speed"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = { p95 = { warning = { max = 400.0 }, critical = { max = 800.0 } } }
[[coldpath.policies.metrics]]
metric = "shift"
thresholds = { shift = { warning = { max = 150.0 } } }

[[coldpath.policies]]
name = "health"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "errors"
thresholds = { rate = { warning = { max = 0.1 }, critical = { max = 0.3 } } }
"""
IGNORED = {"computed_at", "manifest_id", "run"}
# group_size 25: each window's 100 units in 4 shards, two full rounds of the 2 workers (20 made
# 5 shards, a third round with one worker idle, and a process start more per window).


def seed_store(path: Path) -> None:
    """Per app and hour 12-30 documents; some apps slow or failing in some hours."""
    rng = random.Random(5)
    documents = []
    for app in range(APPS):
        app_id = f"app-{app:03d}"
        for hour in range(-1, HOURS):
            slow = 1 + (app % 7 == hour % 7) * 4
            for n in range(rng.randint(5 if app % 10 == 0 else 12, 30)):
                moment = START + timedelta(hours=hour, seconds=rng.uniform(0, 3599))
                documents.append(
                    doc(
                        app_id,
                        moment,
                        latency_ms=rng.uniform(50, 200) * slow,
                        error=rng.random() < (0.4 if app % 9 == hour % 9 else 0.02),
                        number=n,
                        late=n == 0,
                    )
                )

    async def write() -> None:
        async with SqliteStore(path) as store:
            await store.write(documents, [])

    asyncio.run(write())


def backfill(data_dir: Path, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "evalstream",
            "coldpath",
            "backfill",
            "--from",
            START.isoformat(),
            "--to",
            (START + timedelta(hours=HOURS)).isoformat(),
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def count(path: Path, query: str) -> int:
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=30)
    try:
        return int(connection.execute(query).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def shard_pids(data_dir: Path) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"run-shard" in cmdline and str(data_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def results(data_dir: Path) -> dict[tuple[str, str, float, str], dict[str, object]]:
    import orjson

    connection = sqlite3.connect(data_dir / "store.db")
    rows = connection.execute(
        "SELECT app_id, policy, window_start, doc FROM evaluations"
    ).fetchall()
    connection.close()
    out: dict[tuple[str, str, float, str], dict[str, object]] = {}
    for app_id, policy, window_start, body in rows:
        result = orjson.loads(body)
        key = (app_id, policy, window_start, result["metric"])
        assert key not in out, f"two results for {key}"
        out[key] = {k: v for k, v in result.items() if k not in IGNORED}
    return out


def breach_messages(data_dir: Path) -> dict[str, int]:
    connection = sqlite3.connect(data_dir / "alerts.db")
    rows = connection.execute(
        "SELECT message_id, COUNT(*) FROM messages WHERE subscription = 'all' GROUP BY message_id"
    ).fetchall()
    connection.close()
    return dict(rows)


def test_kills_anywhere_leave_exactly_the_uninterrupted_results(tmp_path: Path) -> None:
    config = tmp_path / "evalstream.toml"
    config.write_text(CONFIG)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean.mkdir()
    seed_store(clean / "store.db")
    shutil.copytree(clean, killed)

    reference = backfill(clean, config)
    _, stderr = reference.communicate(timeout=60)
    assert reference.returncode == 0, stderr.decode()
    expected = results(clean)
    assert len(expected) == APPS * 3 * HOURS
    expected_breaches = breach_messages(clean)
    assert len(expected_breaches) >= 10
    assert set(expected_breaches.values()) == {1}

    rng = random.Random(20260301)
    total_units = APPS * 2 * HOURS
    progress = killed / "store.db"
    done = "SELECT COUNT(*) FROM shard_progress"
    thresholds = sorted(rng.sample(range(5, total_units - 20), 6))
    kills = []
    trigger = backfill(killed, config)
    try:
        for threshold in thresholds:
            if trigger.poll() is not None:
                trigger = backfill(killed, config)
            wait_for(lambda: count(progress, done) >= threshold or trigger.poll() is not None, 30)
            if rng.random() < 0.5:
                workers: list[int] = []
                if wait_for(lambda: bool(workers.extend(shard_pids(killed)) or workers), 10):
                    os.kill(rng.choice(workers), signal.SIGKILL)
                    kills.append(("worker", threshold))
            elif trigger.poll() is None:
                os.killpg(trigger.pid, signal.SIGKILL)
                trigger.wait()
                kills.append(("trigger", threshold))
        assert len(kills) >= 5, kills
        if trigger.poll() is None:
            trigger.wait(timeout=60)
        # Whatever state the kills left, one more run completes the job.
        final = backfill(killed, config)
        _, stderr = final.communicate(timeout=60)
        assert final.returncode == 0, stderr.decode()
    finally:
        for process in (trigger,):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    assert count(progress, done) == total_units
    assert results(killed) == expected
    assert breach_messages(killed) == expected_breaches
