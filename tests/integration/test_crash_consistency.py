"""Crash consistency: SIGKILL the processor at random points; nothing is lost or duplicated."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream.producers.simulator import Simulator
from tests.integration.processor_harness import (
    checkpoints,
    kill_at_points,
    prepare,
    run_until_idle,
    store_contents,
)

pytestmark = pytest.mark.integration

EVENTS = 20_000
DUPLICATES = 500
KILLS = 6
# Small batches and frequent checkpoints: many chances for a kill to land between steps.
ENV = {
    "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
    "EVALSTREAM_PROCESSOR__BATCH_SIZE": "200",
    "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.05",
}


def simulated_bodies(seed: int) -> list[tuple[str | None, bytes]]:
    simulator = Simulator(
        apps=8,
        rate=50.0,
        seed=seed,
        start=datetime.now(UTC) - timedelta(hours=3),
        invalid_fraction=0.05,
    )
    events = list(simulator.events(EVENTS))
    bodies = [(event.app_id, event.body) for event in events]
    # Producers retry: the same bytes arrive again at other positions.
    rng = random.Random(seed)
    resent = rng.sample([b for b, e in zip(bodies, events, strict=True) if e.valid], DUPLICATES)
    return bodies + resent


def test_sigkill_at_random_points_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    bodies = simulated_bodies(seed=20261122)
    expected = prepare(data_dir, bodies)
    assert len(expected.quarantine) >= 0.04 * EVENTS  # the stream really contains bad input
    total = len(expected.telemetry) + len(expected.quarantine)

    rng = random.Random(7)
    kill_points = sorted(rng.sample(range(total // 20, total * 9 // 10), KILLS))
    kill_at_points(data_dir, ENV, kill_points)
    run_until_idle(data_dir, ENV)

    telemetry, quarantine = store_contents(data_dir)
    assert len(telemetry) == len(set(telemetry)), "duplicate telemetry documents"
    assert set(telemetry) == expected.telemetry
    assert len({doc_id for _, doc_id in telemetry}) == len(telemetry)
    assert len(quarantine) == len(set(quarantine))
    assert set(quarantine) == expected.quarantine
    assert checkpoints(data_dir) == expected.last_sequence
