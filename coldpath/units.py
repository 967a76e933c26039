"""One unit of a staged manifest at a time: what a Durable activity runs instead of a shard.

``run_one_unit`` keeps the shard task's promise for a single (app, policy): skipped when
progress says done, else evaluated (results and breaches durable) and then marked done under
the shard that holds it, so a shard task and a unit activity can share a manifest safely.
"""

from __future__ import annotations

from coldpath.exceptions import ColdpathError
from coldpath.runner import ShardRunner, UnitOutcome
from schemas import JobManifest, ShardProgress, Unit


def shard_of(manifest: JobManifest, unit: Unit) -> int:
    """The index of the shard that holds ``unit`` (raises ``ColdpathError`` when none does)."""
    try:
        position = manifest.units.index(unit)
    except ValueError:
        raise ColdpathError(
            f"unit {unit.app_id}/{unit.policy} is not in manifest {manifest.id}"
        ) from None
    return position // manifest.group_size


async def run_one_unit(runner: ShardRunner, manifest: JobManifest, unit: Unit) -> UnitOutcome:
    """Evaluate ``unit`` of ``manifest`` unless done; mark it done after its results."""
    group_index = shard_of(manifest, unit)
    if unit.key in await runner.evaluations.done_units(manifest.id):
        return UnitOutcome(unit, (), (), skipped=True)
    outcome = await runner.run_unit(manifest, unit)
    await runner.evaluations.mark_done(
        ShardProgress(
            manifest_id=manifest.id, unit=unit, group_index=group_index, done_at=runner.clock()
        )
    )
    return outcome
