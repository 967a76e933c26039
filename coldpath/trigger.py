"""The trigger: which windows are due, their manifests staged in the store, and their runs.

``plan`` turns policies and a window choice into one manifest per distinct window (policies
with the same window share it), stages each in the evaluation store, and returns them.
``submit`` hands each manifest with work left to an executor. Re-triggering a window plans
the same manifest (same id) whose units are all done: nothing runs again. ``rerun=True``
stages the next run number instead, so every unit is evaluated once more (same result ids).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from coldpath.ports import Executor, JobReport
from coldpath.shards import build_manifest
from coldpath.windows import due_between, last_due
from schemas import EvaluationPolicy, JobManifest, Window
from store.ports import EvaluationStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowChoice:
    """``last`` due window, one explicit window, or every due window in ``[start, end)``."""

    last: bool = True
    window: Window | None = None
    range_start: datetime | None = None
    range_end: datetime | None = None

    def windows(self, policy: EvaluationPolicy, now: datetime) -> list[Window]:
        if self.window is not None:
            return [self.window]
        if self.range_start is not None and self.range_end is not None:
            return list(due_between(policy, self.range_start, self.range_end, now))
        return [last_due(policy, now)]


async def plan(
    policies: Sequence[EvaluationPolicy],
    choice: WindowChoice,
    store: EvaluationStore,
    *,
    now: datetime,
    group_size: int,
    code_version: str,
    rerun: bool = False,
) -> list[JobManifest]:
    """Stage one manifest per window the policies make due; oldest window first."""
    by_window: dict[Window, list[EvaluationPolicy]] = {}
    for policy in policies:
        for window in choice.windows(policy, now):
            by_window.setdefault(window, []).append(policy)
    manifests = []
    for window in sorted(by_window, key=lambda w: (w.start, w.end)):
        window_policies = by_window[window]
        apps = await _apps(window_policies, window, store)
        manifest = build_manifest(
            window, window_policies, apps, group_size=group_size, code_version=code_version
        )
        if rerun:
            manifest = await _next_run(manifest, store)
        await store.stage_manifest(manifest)
        manifests.append(manifest)
    return manifests


async def _apps(
    policies: Iterable[EvaluationPolicy], window: Window, store: EvaluationStore
) -> set[str]:
    apps: set[str] = set()
    if any(policy.apps == "all" for policy in policies):
        apps.update(await store.app_ids(window.start, window.end))
    for policy in policies:
        if policy.apps != "all":
            apps.update(policy.apps)
    return apps


async def _next_run(manifest: JobManifest, store: EvaluationStore) -> JobManifest:
    run = manifest.run + 1
    while True:
        candidate = manifest.model_copy(update={"run": run, "id": ""})
        candidate = JobManifest.model_validate(candidate.model_dump())
        if await store.load_manifest(candidate.id) is None:
            return candidate
        run += 1


async def pending_units(manifest: JobManifest, store: EvaluationStore) -> int:
    """Units of the manifest not yet marked done."""
    done = await store.done_units(manifest.id)
    return sum(unit.key not in done for unit in manifest.units)


async def submit(
    manifests: Sequence[JobManifest], store: EvaluationStore, executor: Executor
) -> list[JobReport]:
    """Run every manifest with units left; a manifest whose units are all done is a no-op."""
    reports = []
    for manifest in manifests:
        if not manifest.units or await pending_units(manifest, store) == 0:
            logger.debug("manifest %s: nothing to do", manifest.id)
            reports.append(JobReport(manifest.id, manifest.shard_count))
            continue
        reports.append(await executor.run(manifest))
    return reports
