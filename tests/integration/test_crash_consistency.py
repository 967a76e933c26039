"""Crash consistency: SIGKILL the processor at random points, hot path on; what is stored and
what is published equals an uninterrupted run over the same log, field for field (but the
processing-time fields), and nothing is lost or duplicated."""

from __future__ import annotations

import asyncio
import random
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stream.producers.simulator import Incident, Simulator
from tests.integration.processor_harness import (
    Expected,
    checkpoints,
    drain_breaches,
    kill_at_points,
    kill_hard,
    prepare,
    run_until_idle,
    start_processor,
    store_contents,
    stored_count,
    stored_documents,
    wait_until,
)

pytestmark = pytest.mark.integration

EVENTS = 20_000
DUPLICATES = 500
KILLS = 6
# Small batches and frequent checkpoints: many chances for a kill to land between steps.
ENV = {
    "EVALSTREAM_PROCESSOR__HOT_PATH": "true",
    "EVALSTREAM_USER_HASH_KEY": "crash-test",
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
        incidents=[
            Incident.parse("latency_regression:app-001@60+200x5"),
            Incident.parse("error_burst:app-002@120+150x0.5"),
        ],
    )
    events = list(simulator.events(EVENTS))
    bodies = [(event.app_id, event.body) for event in events]
    # Producers retry: the same bytes arrive again at other positions.
    rng = random.Random(seed)
    resent = rng.sample([b for b, e in zip(bodies, events, strict=True) if e.valid], DUPLICATES)
    return bodies + resent


def snapshot_ahead_of_checkpoint(data_dir: Path) -> bool:
    """A partition whose detector snapshot (store) covers more than its checkpoint (log)."""
    store = sqlite3.connect(data_dir / "store.db", timeout=30)
    try:
        covered = dict(store.execute("SELECT partition, covered_sequence FROM state"))
    finally:
        store.close()
    done = checkpoints(data_dir)
    return any(sequence > done.get(int(partition), -1) for partition, sequence in covered.items())


def kill_between_snapshot_and_checkpoint(data_dir: Path, point: int, env: dict[str, str]) -> None:
    """SIGKILL the processor after a snapshot landed and before its checkpoint did: the test
    holds the log's write lock, so the checkpoint waits while the store (another file) takes
    the snapshot; the kill comes once one is ahead."""
    process = start_processor(data_dir, env)
    blocker = sqlite3.connect(data_dir / "log.db", timeout=30, isolation_level=None)
    try:
        wait_until(lambda: stored_count(data_dir) >= point, 180, f"{point} stored records")
        blocker.execute("BEGIN IMMEDIATE")
        wait_until(lambda: snapshot_ahead_of_checkpoint(data_dir), 60, "a snapshot ahead")
    finally:
        kill_hard(process)
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert process.returncode == -9


@dataclass(frozen=True)
class Reference:
    log_dir: Path  # the appended log, not processed
    expected: Expected
    data_dir: Path  # the uninterrupted run over a copy of it
    breaches: dict[str, str]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The log, and the uninterrupted run over a copy of it, once for the module: each variant
    below processes its own copy of the same log (enqueued times included)."""
    log_dir = tmp_path_factory.mktemp("log")
    expected = prepare(log_dir, simulated_bodies(seed=20261122))
    reference_dir = tmp_path_factory.mktemp("reference", numbered=True) / "data"
    shutil.copytree(log_dir, reference_dir)
    # The reference runs in one process: worker processes must give exactly its results.
    run_until_idle(reference_dir, {**ENV, "EVALSTREAM_EMBEDDED__WORKERS": "1"})
    breaches = dict(asyncio.run(drain_breaches(reference_dir)))
    assert len(breaches) >= 2  # the incidents opened breaches: the hot path ran
    assert len(expected.quarantine) >= 0.04 * EVENTS  # the stream really contains bad input
    return Reference(log_dir, expected, reference_dir, breaches)


# One process, and worker processes (the kills take the supervisor and every worker at once).
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, workers: str, reference: Reference
) -> None:
    env = {**ENV, "EVALSTREAM_EMBEDDED__WORKERS": workers}
    data_dir, reference_dir = tmp_path / "data", reference.data_dir
    shutil.copytree(reference.log_dir, data_dir)  # the same log, enqueued times included
    expected, reference_breaches = reference.expected, reference.breaches
    total = len(expected.telemetry) + len(expected.quarantine)

    rng = random.Random(7)
    # Snapshot-window kills in the first half: plenty of stream left, so batches (and their
    # snapshots) still come after the test takes the log's lock, however late it gets to it.
    for point in sorted(rng.sample(range(total // 20, total // 2), KILLS // 2)):
        kill_between_snapshot_and_checkpoint(data_dir, point, env)
    kill_at_points(
        data_dir, env, sorted(rng.sample(range(total // 2, total * 9 // 10), KILLS // 2))
    )
    run_until_idle(data_dir, env)

    telemetry, quarantine = store_contents(data_dir)
    assert len(telemetry) == len(set(telemetry)), "duplicate telemetry documents"
    assert set(telemetry) == expected.telemetry
    assert len({doc_id for _, doc_id in telemetry}) == len(telemetry)
    assert len(quarantine) == len(set(quarantine))
    assert set(quarantine) == expected.quarantine
    assert checkpoints(data_dir) == expected.last_sequence
    # Field for field: the late flags, positions, hashes... of every document.
    assert stored_documents(data_dir) == stored_documents(reference_dir)
    # Every breach of the uninterrupted run, with the same content (a breach published again
    # after a kill has the same message id: the topic keeps it once).
    delivered = asyncio.run(drain_breaches(data_dir))
    assert dict(delivered) == reference_breaches
    assert len(delivered) == len(reference_breaches)
