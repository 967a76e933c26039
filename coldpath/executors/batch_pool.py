"""The shard tasks' Batch pool, made to match the settings (``coldpath pool ensure|show|formula``).

``ensure`` creates the pool when missing and otherwise re-applies what can change in place (the
autoscale formula and its interval); properties Batch cannot change on a live pool (VM size,
image, task slots) are reported as drift, never silently recreated. Node identity (a
user-assigned managed identity) is set where the pool is provisioned through Azure Resource
Manager (Bicep/ARM or ``az batch pool create`` with ``--identity``), not through this data-plane
call: the ``docs/azure.md`` Batch section says how.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from azure.batch import models
from azure.batch.aio import BatchClient
from azure.core.exceptions import ResourceExistsError

from coldpath.executors import batch_answers as answers
from coldpath.executors.batch_answers import wire_text
from coldpath.executors.batch_config import PoolSettings, autoscale_formula
from coldpath.executors.batch_errors import SDK_FAILURES, BatchError, map_error

logger = logging.getLogger(__name__)


def pool_options(pool: PoolSettings) -> models.BatchPoolCreateOptions:
    image = pool.image
    start_task = None
    if pool.start_task:
        start_task = models.BatchStartTask(
            command_line=pool.start_task,
            wait_for_success=True,
            max_task_retry_count=2,
            user_identity=models.UserIdentity(
                auto_user=models.AutoUserSpecification(
                    scope=models.AutoUserScope.POOL,
                    elevation_level=models.ElevationLevel.ADMIN,
                )
            ),
        )
    options = models.BatchPoolCreateOptions(
        id=pool.id,
        vm_size=pool.vm_size,
        virtual_machine_configuration=models.VirtualMachineConfiguration(
            image_reference=models.BatchVmImageReference(
                publisher=image.publisher, offer=image.offer, sku=image.sku, version=image.version
            ),
            node_agent_sku_id=image.node_agent_sku_id,
        ),
        task_slots_per_node=pool.task_slots_per_node,
        task_scheduling_policy=models.BatchTaskSchedulingPolicy(
            node_fill_type=models.BatchNodeFillType.PACK
            if pool.scheduling == "pack"
            else models.BatchNodeFillType.SPREAD
        ),
        start_task=start_task,
        metadata=[models.BatchMetadataItem(name="profile", value=pool.profile)],
    )
    if pool.autoscale:
        options.enable_auto_scale = True
        options.auto_scale_formula = autoscale_formula(pool)
        options.auto_scale_evaluation_interval = pool.evaluation_interval
    else:
        options.target_dedicated_nodes = pool.dedicated_nodes
        options.target_low_priority_nodes = pool.spot_nodes
    return options


@dataclass(frozen=True)
class PoolView:
    """What ``pool show`` prints."""

    id: str
    state: str
    allocation_state: str
    vm_size: str
    task_slots_per_node: int
    autoscale: bool
    dedicated_current: int
    dedicated_target: int
    spot_current: int
    spot_target: int
    formula: str | None
    last_autoscale: str | None
    drift: tuple[str, ...] = field(default=())


def _view(pool: models.BatchPool, wanted: PoolSettings) -> PoolView:
    drift = []
    if (pool.vm_size or "").lower() != wanted.vm_size.lower():
        drift.append(f"vm_size is {pool.vm_size}, settings say {wanted.vm_size}")
    if pool.task_slots_per_node != wanted.task_slots_per_node:
        drift.append(
            f"task_slots_per_node is {pool.task_slots_per_node}, "
            f"settings say {wanted.task_slots_per_node}"
        )
    run = pool.auto_scale_run
    last = None
    if run is not None:
        last = run.results if run.error is None else f"error {run.error.code}: {run.error.message}"
    return PoolView(
        id=pool.id or wanted.id,
        state=wire_text(pool.state),
        allocation_state=wire_text(pool.allocation_state),
        vm_size=pool.vm_size or "",
        task_slots_per_node=pool.task_slots_per_node or 1,
        autoscale=bool(pool.enable_auto_scale),
        dedicated_current=pool.current_dedicated_nodes or 0,
        dedicated_target=pool.target_dedicated_nodes or 0,
        spot_current=pool.current_low_priority_nodes or 0,
        spot_target=pool.target_low_priority_nodes or 0,
        formula=pool.auto_scale_formula,
        last_autoscale=last,
        drift=tuple(drift),
    )


async def show(client: BatchClient, pool: PoolSettings) -> PoolView:
    try:
        what = f"reading pool {pool.id}"
        return _view(answers.pool(await client.get_pool(pool.id), what), pool)
    except SDK_FAILURES as exc:
        raise map_error(exc, f"reading pool {pool.id}") from exc


async def ensure(client: BatchClient, pool: PoolSettings) -> tuple[str, PoolView]:
    """Create the pool or bring its formula up to date: ("created" | "updated" | "unchanged",
    the pool as it is now, with any drift that needs a new pool)."""
    try:
        try:
            await client.create_pool(pool_options(pool))
            action = "created"
        except ResourceExistsError:
            current = answers.pool(await client.get_pool(pool.id), f"reading pool {pool.id}")
            action = "unchanged"
            formula = autoscale_formula(pool) if pool.autoscale else None
            if formula is not None and (
                current.auto_scale_formula != formula or not current.enable_auto_scale
            ):
                await client.enable_pool_auto_scale(
                    pool.id,
                    models.BatchPoolEnableAutoScaleOptions(
                        auto_scale_formula=formula,
                        auto_scale_evaluation_interval=pool.evaluation_interval,
                    ),
                )
                action = "updated"
        view = _view(answers.pool(await client.get_pool(pool.id), f"reading pool {pool.id}"), pool)
    except SDK_FAILURES as exc:
        raise map_error(exc, f"ensuring pool {pool.id}") from exc
    logger.info("pool %s %s", pool.id, action)
    return action, view


async def evaluate(client: BatchClient, pool_id: str, formula: str) -> dict[str, str]:
    """Batch's evaluation of ``formula`` on the pool now (nothing is applied): every variable
    the formula assigned, by name; raises when the formula does not evaluate."""
    try:
        run = await client.evaluate_pool_auto_scale(
            pool_id, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula=formula)
        )
    except SDK_FAILURES as exc:
        raise map_error(exc, f"evaluating the autoscale formula on pool {pool_id}") from exc
    if run.error is not None:
        raise map_error_from_run(pool_id, run.error)
    values: dict[str, str] = {}
    for statement in (run.results or "").split(";"):
        name, _, value = statement.partition("=")
        if name.strip():
            values[name.strip()] = value.strip()
    return values


def map_error_from_run(pool_id: str, error: models.AutoScaleRunError) -> BatchError:
    details = "; ".join(f"{v.name}={v.value}" for v in error.error_values or [])
    return BatchError(
        f"autoscale formula on pool {pool_id}: {error.code}: {error.message} {details}".strip(),
        code=error.code,
        retryable=False,
    )
