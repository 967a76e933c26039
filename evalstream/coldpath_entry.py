"""The trigger API composed from settings for the deploy entry points (the Functions timer,
the Durable orchestration's activities); the AKS CronJob and plain cron run the CLI instead.

Every function opens what it needs from the settings and closes it before returning, so a
function host can call them from any invocation; policies the metric catalogue refuses raise
``PolicyConfigError`` before anything is planned or run. Payloads crossing the Durable boundary are
the small models below (JSON by ``model_dump(mode="json")``), never whole manifests: those are
staged in the evaluation store and read back by id.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from coldpath.exceptions import ManifestNotFound
from coldpath.executors.inline import InlineExecutor
from coldpath.ports import Executor, JobReport
from coldpath.trigger import WindowChoice, plan, submit
from coldpath.units import run_one_unit
from evalstream import wiring
from evalstream.settings import Settings, SettingsError
from schemas import EvaluationPolicy, Unit, Window
from schemas.evaluation import ComputeClass
from store.ports import EvaluationStore

logger = logging.getLogger(__name__)

# Where shards run when an entry point is not told: Batch on Azure, this process otherwise.
DEFAULT_EXECUTOR = {"azure": "batch", "embedded": "inline"}
EXECUTORS = ("inline", "local", "batch")


class PlannedManifest(BaseModel):
    """A staged manifest as the orchestrator sees it: its units not yet done."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    window: Window
    compute_class: ComputeClass
    policies: tuple[str, ...]
    pending: tuple[Unit, ...]
    shards: int = Field(ge=0)


class UnitReport(BaseModel):
    """What one unit activity did."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_id: str
    app_id: str
    policy: str
    skipped: bool
    results: int = Field(ge=0)
    breaches: int = Field(ge=0)


class ManifestReport(BaseModel):
    """How an executor left a manifest: failed shards with their errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_id: str
    shards: int
    succeeded: tuple[int, ...] = ()
    failed: dict[int, str] = Field(default_factory=dict)

    @classmethod
    def of(cls, report: JobReport) -> ManifestReport:
        return cls(
            manifest_id=report.manifest_id,
            shards=report.shards,
            succeeded=tuple(report.succeeded),
            failed=dict(report.failed),
        )


def executor_name(settings: Settings, configured: str | None) -> str:
    """``configured`` if set, else the backend's default; raises ``SettingsError`` if unknown."""
    name = configured or DEFAULT_EXECUTOR[settings.backend]
    if name not in EXECUTORS:
        raise SettingsError(f"executor {name!r} is not available (known: {', '.join(EXECUTORS)})")
    return name


def by_compute_class(
    policies: Sequence[EvaluationPolicy],
) -> dict[ComputeClass, list[EvaluationPolicy]]:
    """Light and heavy policies apart (each class present only when it has policies)."""
    classes: dict[ComputeClass, list[EvaluationPolicy]] = {}
    for policy in policies:
        classes.setdefault(policy.compute_class, []).append(policy)
    return classes


@asynccontextmanager
async def _executor(
    settings: Settings, name: str, evaluations: EvaluationStore
) -> AsyncIterator[Executor]:
    if name == "inline":
        async with wiring.shard_runner(settings, evaluations) as runner:
            yield InlineExecutor(runner)
        return
    # Batch is submitted and left running: a function invocation must not outlive its job.
    yield wiring.executor(settings, name, follow=name != "batch")


async def trigger_due(
    settings: Settings, now: datetime, executor: str | None = None
) -> list[ManifestReport]:
    """Plan the latest due window of every policy and run it on ``executor`` (the timer's
    work; the same as ``evalstream coldpath trigger``). Done windows are no-ops."""
    name = executor_name(settings, executor)
    policies = wiring.policies(settings)
    async with wiring.evaluation_store(settings) as store:
        manifests = await plan(
            list(policies),
            WindowChoice(),
            store,
            now=now,
            group_size=settings.coldpath.group_size,
            code_version=wiring.code_version(),
        )
        async with _executor(settings, name, store) as chosen:
            reports = await submit(manifests, store, chosen)
    return [ManifestReport.of(report) for report in reports]


async def plan_due(settings: Settings, now: datetime) -> list[PlannedManifest]:
    """Stage the latest due window's manifests, one set per compute class, so light units can
    fan out as activities while heavy policies go to Batch as whole manifests."""
    planned = []
    classes = by_compute_class(wiring.policies(settings))
    async with wiring.evaluation_store(settings) as store:
        for compute_class, policies in sorted(classes.items()):
            manifests = await plan(
                policies,
                WindowChoice(),
                store,
                now=now,
                group_size=settings.coldpath.group_size,
                code_version=wiring.code_version(),
            )
            for manifest in manifests:
                done = await store.done_units(manifest.id)
                planned.append(
                    PlannedManifest(
                        id=manifest.id,
                        window=manifest.window,
                        compute_class=compute_class,
                        policies=tuple(policy.name for policy in manifest.policies),
                        pending=tuple(unit for unit in manifest.units if unit.key not in done),
                        shards=manifest.shard_count,
                    )
                )
    return planned


async def evaluate_unit(settings: Settings, manifest_id: str, unit: Unit) -> UnitReport:
    """Run one unit of a staged manifest (skipped when already done)."""
    async with wiring.evaluation_store(settings) as store:
        manifest = await store.load_manifest(manifest_id)
        if manifest is None:
            raise ManifestNotFound(f"no manifest {manifest_id!r} staged")
        async with wiring.shard_runner(settings, store) as runner:
            outcome = await run_one_unit(runner, manifest, unit)
    return UnitReport(
        manifest_id=manifest_id,
        app_id=unit.app_id,
        policy=unit.policy,
        skipped=outcome.skipped,
        results=len(outcome.results),
        breaches=len(outcome.breaches),
    )


async def submit_manifests(
    settings: Settings, manifest_ids: Sequence[str], executor: str | None = None
) -> list[ManifestReport]:
    """Hand whole staged manifests to ``executor`` (Batch on Azure: submitted, not followed)."""
    name = executor_name(settings, executor)
    async with wiring.evaluation_store(settings) as store:
        manifests = []
        for manifest_id in manifest_ids:
            manifest = await store.load_manifest(manifest_id)
            if manifest is None:
                raise ManifestNotFound(f"no manifest {manifest_id!r} staged")
            manifests.append(manifest)
        async with _executor(settings, name, store) as chosen:
            reports = await submit(manifests, store, chosen)
    return [ManifestReport.of(report) for report in reports]
