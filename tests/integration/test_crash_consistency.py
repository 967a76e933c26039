"""Crash consistency: SIGKILL the processor at random points, hot path on; what is stored and
what is published equals an uninterrupted run over the same log, field for field (but the
processing-time fields), and nothing is lost or duplicated."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest

from common.sqlite import sqlite3
from tests.integration.conftest import SimulatedRun
from tests.integration.processor_harness import (
    KILL_ENV,
    SIMULATED_EVENTS,
    checkpoints,
    drain_breaches,
    kill_at_points,
    kill_hard,
    run_until_idle,
    start_processor,
    store_contents,
    stored_count,
    stored_documents,
    stuck,
    wait_for_stored,
    wait_until,
)

pytestmark = pytest.mark.integration

# Five kills (the issue asks for at least five random points): two in the window between a
# snapshot and its checkpoint, three anywhere. Each kill costs a processor start.
SNAPSHOT_KILLS = 2
ANYWHERE_KILLS = 3
# Starts over on a fresh copy of the log when the test fell behind the processor (see
# kill_between_snapshot_and_checkpoint).
ATTEMPTS = 3
ENV = KILL_ENV


def snapshot_ahead_of_checkpoint(data_dir: Path) -> bool:
    """A partition whose detector snapshot (store) covers more than its checkpoint (log)."""
    store = sqlite3.connect(data_dir / "store.db", timeout=30)
    try:
        covered = dict(store.execute("SELECT partition, covered_sequence FROM state"))
    finally:
        store.close()
    done = checkpoints(data_dir)
    return any(sequence > done.get(int(partition), -1) for partition, sequence in covered.items())


def kill_between_snapshot_and_checkpoint(
    data_dir: Path, point: int, env: dict[str, str], total: int
) -> bool:
    """SIGKILL the processor after a snapshot landed and before its checkpoint did: the test
    holds the log's write lock, so the checkpoint waits while the store (another file) takes
    the snapshot; the kill comes once one is ahead. True when it did; False when the processor
    had stored the whole stream (``total`` records) before the test held the lock: no batch is
    left to snapshot, and a caught-up partition's last checkpoint waits for its next batch (a
    test slowed down by a loaded machine: seen in CI)."""
    # Past the point and stored by this processor: the lock must come once it is processing
    # (taken while it opens the log, no batch would come to snapshot).
    target = max(point, stored_count(data_dir) + 1)
    process = start_processor(data_dir, env)
    wait_for_stored(data_dir, process, target)
    blocker = sqlite3.connect(data_dir / "log.db", timeout=30, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        if stored_count(data_dir) >= total:
            return False
        try:
            wait_until(
                lambda: snapshot_ahead_of_checkpoint(data_dir) or process.poll() is not None,
                60,
                "a snapshot ahead",
            )
            assert process.poll() is None, f"exited with {process.returncode} under the lock"
        except AssertionError as exc:
            raise stuck(process, str(exc)) from None
    finally:
        if process.poll() is None:  # stuck() killed it already
            kill_hard(process)
        if blocker.in_transaction:
            blocker.execute("ROLLBACK")
        blocker.close()
    assert process.returncode == -9
    return True


# One process, and worker processes (the kills take the supervisor and every worker at once).
@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, workers: str, simulated_run: SimulatedRun
) -> None:
    env = {**ENV, "EVALSTREAM_EMBEDDED__WORKERS": workers}
    reference_dir = simulated_run.reference_dir
    expected = simulated_run.expected
    # The reference ran in one process: worker processes must give exactly its results.
    reference_breaches = dict(simulated_run.breaches)
    assert len(reference_breaches) >= 2  # the incidents opened breaches: the hot path ran
    assert len(expected.quarantine) >= 0.04 * SIMULATED_EVENTS  # the stream has bad input
    total = len(expected.telemetry) + len(expected.quarantine)

    rng = random.Random(7)
    # Snapshot-window kills in the first half: plenty of stream left, so batches (and their
    # snapshots) come after the test takes the log's lock unless the test falls ~1 s behind
    # the processor; then it starts over on a fresh copy of the log.
    in_window = sorted(rng.sample(range(total // 20, total // 2), SNAPSHOT_KILLS))
    for attempt in range(ATTEMPTS):
        data_dir = tmp_path / f"data-{attempt}"
        shutil.copytree(simulated_run.log_dir, data_dir)  # the same log, enqueued times included
        if all(kill_between_snapshot_and_checkpoint(data_dir, p, env, total) for p in in_window):
            break
    else:
        pytest.fail(f"the processor finished the stream before the log's lock {ATTEMPTS} times")
    kill_at_points(
        data_dir, env, sorted(rng.sample(range(total // 2, total * 9 // 10), ANYWHERE_KILLS))
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
