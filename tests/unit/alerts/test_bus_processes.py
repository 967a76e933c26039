"""The embedded topic shared by processes: a publisher and receivers running at the same time."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from alerts.sqlite_bus import SqliteAlertReceiver
from tests.unit.alerts.bus_worker import SPEC

ROOT = Path(__file__).resolve().parents[3]
COUNT = 600


def _worker(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.unit.alerts.bus_worker", *args],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
    )


async def _until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while process.poll() is None:
        assert asyncio.get_running_loop().time() < deadline, "worker process did not finish"
        await asyncio.sleep(0.02)
    assert process.returncode == 0, process.stderr.read().decode() if process.stderr else ""


@pytest.mark.integration
async def test_publisher_and_receivers_in_separate_processes_deliver_each_alert_once(
    tmp_path: Path,
) -> None:
    bus = tmp_path / "alerts.db"
    # Create the subscription first, so nothing published before a receiver opened is missed.
    async with SqliteAlertReceiver(bus, SPEC):
        pass
    other_out = tmp_path / "other.txt"
    other = _worker("receive", str(bus), str(other_out))
    publisher: subprocess.Popen[bytes] | None = None
    received: list[str] = []
    try:
        async with SqliteAlertReceiver(bus, SPEC, poll_interval_s=0.005) as rx:

            async def take(wait_s: float) -> int:
                alerts = await rx.receive(5, wait_s)
                for alert in alerts:
                    await rx.complete(alert)
                    received.append(alert.message_id)
                return len(alerts)

            await _until(other_out.exists, 30)  # the other receiver is open
            publisher = _worker("publish", str(bus), str(COUNT), "5")

            def others() -> int:
                return len(other_out.read_text().split())

            def my_turn() -> bool:
                # Take turns, so neither receiver takes everything on a loaded machine where
                # the other one is scheduled late.
                return others() >= len(received) or others() + len(received) == COUNT

            # This receiver takes the first messages, then lets the other one start.
            while not received:
                await take(0.05)
            (tmp_path / "alerts.db.go").touch()
            deadline = asyncio.get_running_loop().time() + 60
            while others() + len(received) < COUNT:
                assert asyncio.get_running_loop().time() < deadline, "alerts missing"
                await _until(my_turn, 30)
                await take(0.05)
            await _wait(publisher, 30)
            (tmp_path / "alerts.db.done").touch()
            await _wait(other, 30)
            assert await rx.receive(10, 0) == []
    finally:
        for process in (other, publisher):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()
    received += other_out.read_text().split()
    counts = Counter(received)
    assert len(counts) == COUNT
    assert max(counts.values()) == 1
    # Both processes took part: the receivers really competed for the same subscription.
    assert 0 < len(received) - len(other_out.read_text().split()) < COUNT
