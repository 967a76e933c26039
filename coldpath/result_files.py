"""Per-shard result files: a shard's evaluation results as JSON lines, for teams that read
results from Blob storage (settings ``azure.batch.staging.result_files``).

The file is written after the shard's last unit, from the evaluation store rather than from
what this attempt computed: a retried task skips the units an earlier attempt finished, and
the file must still hold every unit of the shard.
"""

from __future__ import annotations

from schemas import EvaluationResult, JobManifest
from store.ports import EvaluationStore

# Results of one (app, policy) read back per unit: newer windows come first, so the limit must
# cover every later window that may already be stored beside this one.
_RESULTS_PER_UNIT = 100_000


def result_file_name(manifest_id: str, group_index: int) -> str:
    return f"results/{manifest_id}/shard-{group_index:05d}.jsonl"


async def shard_results(
    evaluations: EvaluationStore, manifest: JobManifest, group_index: int
) -> list[EvaluationResult]:
    """The stored results of every unit of the shard, from this manifest, sorted by id."""
    found: list[EvaluationResult] = []
    for unit in manifest.shard(group_index):
        stored = await evaluations.results(
            app_id=unit.app_id,
            policy=unit.policy,
            since=manifest.window.start,
            limit=_RESULTS_PER_UNIT,
        )
        found.extend(result for result in stored if result.manifest_id == manifest.id)
    return sorted(found, key=lambda result: result.id)


def result_lines(results: list[EvaluationResult]) -> str:
    return "".join(result.model_dump_json() + "\n" for result in results)
