"""One unit at a time (what a Durable activity runs): the same results as its shard, progress
under the shard that holds it, nothing run twice."""

from __future__ import annotations

import pytest

from coldpath.exceptions import ColdpathError
from coldpath.units import run_one_unit, shard_of
from schemas import Unit
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore
from tests.unit.coldpath.fakes import RecordingPublisher
from tests.unit.coldpath.test_runner import manifest, run_all, runner, stores

__all__ = ["stores"]  # the fixture, shared with the runner's tests


async def test_units_one_by_one_equal_the_shards(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    job = manifest()
    bus = RecordingPublisher()
    unit_runner = runner(stores, bus)
    outcomes = [await run_one_unit(unit_runner, job, unit) for unit in reversed(job.units)]
    assert not any(outcome.skipped for outcome in outcomes)
    by_units = {r.id: r.model_dump(exclude={"computed_at"}) for r in await stores[1].results()}
    done = await stores[1].done_units(job.id)
    assert done == {unit.key for unit in job.units}

    # The shards find every unit done; a second unit run skips too.
    shard_bus = RecordingPublisher()
    await run_all(runner(stores, shard_bus), job)
    assert shard_bus.calls == 0
    assert (await run_one_unit(unit_runner, job, job.units[0])).skipped
    assert {r.id: r.model_dump(exclude={"computed_at"}) for r in await stores[1].results()} == (
        by_units
    )
    assert len(bus.published) == sum(len(outcome.breaches) for outcome in outcomes) > 0


def test_shard_of_follows_the_group_size() -> None:
    job = manifest()
    assert [shard_of(job, unit) for unit in job.units] == [0, 0, 1, 1]
    with pytest.raises(ColdpathError, match="not in manifest"):
        shard_of(job, Unit(app_id="zzz", policy=job.units[0].policy))
