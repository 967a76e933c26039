"""Pools from the settings on the Batch test server: `coldpath pool ensure|show|formula
--evaluate` through the CLI, and the generated autoscale formula evaluated by the server's
evaluate-autoscale call at queue depths 0, 1, 100 and 10,000 for both pool profiles."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import uuid

import pytest
from azure.batch import models as batch
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential

from coldpath.executors import batch_pool
from coldpath.executors.batch_config import PoolSettings, autoscale_formula
from coldpath.executors.batch_errors import BatchError
from tests.emulators.batch_fixtures import BatchServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEPTHS = (0, 1, 100, 10_000)
PROFILES = {
    "production": PoolSettings(profile="production", min_nodes=1, max_nodes=40),
    "cost_saving": PoolSettings(profile="cost_saving", min_nodes=0, max_nodes=40, spot_share=0.8),
}


def expected(pool: PoolSettings, depth: int) -> tuple[int, int]:
    """(dedicated, Spot) by hand: clamp(ceil(depth / slots)), Spot share rounded down."""
    nodes = min(pool.max_nodes, max(pool.min_nodes, math.ceil(depth / pool.task_slots_per_node)))
    spot = math.floor(nodes * pool.effective_spot_share)
    return nodes - spot, spot


def client(server: BatchServer) -> BatchClient:
    return BatchClient(server.url, AzureNamedKeyCredential(server.account_name, server.account_key))


def test_the_formula_follows_queue_depth_within_bounds_and_spot_share(
    batch_server: BatchServer,
) -> None:
    suffix = uuid.uuid4().hex[:8]
    # A pool with no nodes: added tasks stay queued, so $PendingTasks is the queue depth.
    queue_pool = f"queue-{suffix}"
    job = f"depth-{suffix}"

    async def scenario() -> dict[str, list[tuple[int, int]]]:
        seen: dict[str, list[tuple[int, int]]] = {name: [] for name in PROFILES}
        async with client(batch_server) as c:
            await c.create_pool(
                batch.BatchPoolCreateOptions(
                    id=queue_pool, vm_size="standard_d2s_v3", target_dedicated_nodes=0
                )
            )
            await c.create_job(
                batch.BatchJobCreateOptions(
                    id=job, pool_info=batch.BatchPoolInfo(pool_id=queue_pool)
                )
            )
            added = 0
            for depth in DEPTHS:
                while added < depth:
                    count = min(100, depth - added)
                    tasks = [
                        batch.BatchTaskCreateOptions(id=f"t{added + i}", command_line="true")
                        for i in range(count)
                    ]
                    await c.create_task_collection(job, batch.BatchTaskGroup(task_values=tasks))
                    added += count
                for name, pool in PROFILES.items():
                    values = await batch_pool.evaluate(c, queue_pool, autoscale_formula(pool))
                    seen[name].append(
                        (
                            int(float(values["$TargetDedicatedNodes"])),
                            int(float(values["$TargetLowPriorityNodes"])),
                        )
                    )
            await (await c.begin_delete_job(job)).result()
        return seen

    seen = asyncio.run(scenario())
    for name, pool in PROFILES.items():
        assert seen[name] == [expected(pool, depth) for depth in DEPTHS], name
    # Spelled out for the record: production is all dedicated, cost saving mostly Spot.
    assert seen["production"] == [(1, 0), (1, 0), (25, 0), (40, 0)]
    assert seen["cost_saving"] == [(0, 0), (1, 0), (5, 20), (8, 32)]


def test_pool_commands(batch_server: BatchServer) -> None:
    pool_id = f"cli-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "EVALSTREAM_AZURE__BATCH__ACCOUNT_URL": batch_server.url,
        "EVALSTREAM_AZURE__BATCH__ACCOUNT_NAME": batch_server.account_name,
        "EVALSTREAM_AZURE__BATCH__ACCOUNT_KEY": batch_server.account_key,
        "EVALSTREAM_AZURE__BATCH__POOL__ID": pool_id,
        "EVALSTREAM_AZURE__BATCH__POOL__PROFILE": "cost_saving",
        "EVALSTREAM_AZURE__BATCH__POOL__MAX_NODES": "6",
    }

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "evalstream", "coldpath", "pool", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    assert f"pool {pool_id}: created" in cli("ensure")
    settings = PoolSettings(id=pool_id, profile="cost_saving", max_nodes=6)

    async def ensure_again() -> list[str]:
        async with client(batch_server) as c:
            unchanged, _ = await batch_pool.ensure(c, settings)
            bigger = settings.model_copy(update={"max_nodes": 8})
            updated, view = await batch_pool.ensure(c, bigger)
            assert view.formula == autoscale_formula(bigger) and view.drift == ()
            slots = bigger.model_copy(update={"task_slots_per_node": 8})
            _, drifted = await batch_pool.ensure(c, slots)
            return [unchanged, updated, *drifted.drift]

    assert asyncio.run(ensure_again()) == [
        "unchanged",
        "updated",
        "task_slots_per_node is 4, settings say 8",
    ]
    env["EVALSTREAM_AZURE__BATCH__POOL__MAX_NODES"] = "8"
    shown = cli("show")
    assert f"pool {pool_id}: active" in shown and "autoscale on" in shown
    assert "Spot nodes 0 (target 0)" in shown
    evaluated = cli("formula", "--evaluate")
    assert "$nodes = min(8, max(0, $wanted));" in evaluated
    assert "$TargetDedicatedNodes = 0" in evaluated
    assert "$TargetLowPriorityNodes = 0" in evaluated
    assert "$NodeDeallocationOption = taskcompletion" in evaluated


@pytest.mark.parametrize(
    ("answer", "problem"),
    [([], "a pool is a JSON object, not []"), ({}, "the pool's id is None")],
    ids=["pool-as-a-list", "pool-without-id"],
)
def test_pool_show_refuses_an_answer_of_the_wrong_shape(
    batch_server: BatchServer, answer: object, problem: str
) -> None:
    pool_id = f"shape-{uuid.uuid4().hex[:8]}"
    settings = PoolSettings(id=pool_id, profile="cost_saving", max_nodes=2)

    async def shown() -> None:
        async with client(batch_server) as c:
            await batch_pool.ensure(c, settings)
            batch_server.fail_requests(
                200, 1, match=f"/pools/{pool_id}$", method="GET", answer=answer
            )
            await batch_pool.show(c, settings)

    with pytest.raises(
        BatchError, match="the answer is not of the Batch service's shape"
    ) as caught:
        asyncio.run(shown())
    assert f"reading pool {pool_id}" in str(caught.value) and problem in str(caught.value)
    assert not caught.value.retryable
