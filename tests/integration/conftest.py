"""Fixtures the integration tests share."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.processor_harness import (
    KILL_ENV,
    Expected,
    drain_breaches,
    prepare,
    run_until_idle,
    simulated_bodies,
)


@dataclass(frozen=True)
class SimulatedRun:
    """The kill tests' stream, its log appended once (not processed), and the uninterrupted
    run over a copy of that log in one process (worker processes must give exactly its
    results)."""

    bodies: list[tuple[str | None, bytes]]
    log_dir: Path
    expected: Expected
    reference_dir: Path
    breaches: list[tuple[str, str]]  # (message id, breach JSON) as delivered


@pytest.fixture(scope="session")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> SimulatedRun:
    """Once for the session: the crash-consistency variants and the worker kills compare
    against the same uninterrupted run. Tests copy ``log_dir``; nothing writes to either dir."""
    bodies = simulated_bodies(seed=20261122)
    log_dir = tmp_path_factory.mktemp("simulated-log")
    expected = prepare(log_dir, bodies)
    reference_dir = tmp_path_factory.mktemp("simulated-reference") / "data"
    shutil.copytree(log_dir, reference_dir)  # the same log, enqueued times included
    run_until_idle(reference_dir, {**KILL_ENV, "EVALSTREAM_EMBEDDED__WORKERS": "1"})
    breaches = asyncio.run(drain_breaches(reference_dir))
    return SimulatedRun(bodies, log_dir, expected, reference_dir, breaches)
