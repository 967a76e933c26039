"""The cold path scheduled inside ``process``: it evaluates on a thread of its own, so the
processor's loop (the simulator, in-process ingest, the ops routes, the workers' heartbeats)
goes on while an evaluation computes; it stops with the processor; its failure is raised."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from evalstream import coldpath_schedule, wiring
from evalstream.settings import Settings, load_settings


def _settings(tmp_path: Path) -> Settings:
    return load_settings(embedded={"data_dir": tmp_path}, coldpath={"schedule_interval_s": 0.01})


async def test_an_evaluation_computing_apart_leaves_the_callers_loop_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    passes: list[str] = []
    three = threading.Event()

    async def evaluate_due(*_: Any) -> None:
        # What an evaluation of a busy window does to its loop: 0.3 s of CPU in one go.
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
        passes.append(threading.current_thread().name)
        if len(passes) >= 3:
            three.set()

    monkeypatch.setattr(coldpath_schedule, "_evaluate_due", evaluate_due)
    stop = asyncio.Event()
    gaps: list[float] = []

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async with asyncio.timeout(60):
        ticker = asyncio.create_task(tick())
        running = asyncio.create_task(
            coldpath_schedule.run_schedule_apart(
                settings, wiring.metric_catalogue(settings), stop, lambda _: None
            )
        )
        await asyncio.to_thread(three.wait)
        stop.set()
        await running
        await ticker
    assert threading.current_thread().name not in passes
    # On this loop each pass would have held it for 0.3 s; apart, the interpreter switches.
    assert max(gaps) < 0.2, max(gaps)


async def test_a_stop_before_the_thread_runs_ends_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    stop = asyncio.Event()
    stop.set()
    async with asyncio.timeout(60):
        await coldpath_schedule.run_schedule_apart(
            settings, wiring.metric_catalogue(settings), stop, lambda _: None
        )


async def test_a_failure_of_the_schedule_is_raised_to_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)

    async def evaluate_due(*_: Any) -> None:
        raise RuntimeError("a bug in a metric")

    monkeypatch.setattr(coldpath_schedule, "_evaluate_due", evaluate_due)
    with pytest.raises(RuntimeError, match="a bug in a metric"):
        async with asyncio.timeout(60):
            await coldpath_schedule.run_schedule_apart(
                settings, wiring.metric_catalogue(settings), asyncio.Event(), lambda _: None
            )
