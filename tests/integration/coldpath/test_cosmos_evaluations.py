"""CosmosEvaluationStore against cosmosdb-server: result upserts by id, progress, manifests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from azure.cosmos.aio import CosmosClient

from coldpath.shards import build_manifest
from schemas import EvaluationPolicy, EvaluationResult, ShardProgress, Window
from schemas.evaluation import evaluation_pk, evaluation_result_id
from store.cosmos_evaluations import CosmosEvaluationStore
from store.exceptions import ContainerNotFound
from tests.emulators.npm_fixtures import CosmosServer

pytestmark = pytest.mark.integration

WINDOW = Window(start=datetime(2026, 3, 1, 23, tzinfo=UTC), end=datetime(2026, 3, 2, 0, tzinfo=UTC))
POLICY = EvaluationPolicy.model_validate({"name": "q", "metrics": [{"metric": "latency"}]})


@pytest.fixture
async def store(cosmos_server: CosmosServer) -> AsyncIterator[CosmosEvaluationStore]:
    database = f"evals-{uuid.uuid4().hex[:12]}"
    async with CosmosEvaluationStore(
        cosmos_server.endpoint, cosmos_server.key, database=database
    ) as opened:
        yield opened
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
        await client.delete_database(database)


def result(app_id: str, p95: float, manifest_id: str = "m") -> EvaluationResult:
    return EvaluationResult(
        id=evaluation_result_id(app_id, "q", 1, WINDOW, "latency", 1),
        pk=evaluation_pk(app_id, WINDOW),
        app_id=app_id,
        policy="q",
        policy_version=1,
        metric="latency",
        metric_version=1,
        window=WINDOW,
        values={"p95": p95},
        sample_size=10,
        status="ok",
        manifest_id=manifest_id,
        computed_at=datetime.now(UTC),
    )


async def test_results_upsert_by_id_in_the_window_start_day_partition(
    store: CosmosEvaluationStore,
) -> None:
    await store.upsert_results([result("a", 1.0), result("b", 2.0)])
    await store.upsert_results([result("a", 3.0, "m2")])
    stored = {r.app_id: r for r in await store.results()}
    assert stored.keys() == {"a", "b"}
    assert stored["a"].values == {"p95": 3.0} and stored["a"].pk == "a:2026-03-01"
    assert [r.app_id for r in await store.results(app_id="b")] == ["b"]
    assert await store.results(since=WINDOW.end + timedelta(hours=1)) == []


async def test_manifests_and_progress(store: CosmosEvaluationStore) -> None:
    manifest = build_manifest(WINDOW, [POLICY], ["a", "b"], group_size=1, code_version="t")
    assert await store.load_manifest(manifest.id) is None
    await store.stage_manifest(manifest)
    await store.stage_manifest(manifest)
    assert await store.load_manifest(manifest.id) == manifest
    assert await store.done_units(manifest.id) == set()
    unit = manifest.units[0]
    progress = ShardProgress(
        manifest_id=manifest.id, unit=unit, group_index=0, done_at=datetime.now(UTC)
    )
    await store.mark_done(progress)
    await store.mark_done(progress)
    assert await store.done_units(manifest.id) == {unit.key}


async def test_the_apps_of_a_window_are_listed_once_each(
    store: CosmosEvaluationStore, cosmos_server: CosmosServer
) -> None:
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
        telemetry = client.get_database_client(store.database).get_container_client("telemetry")
        start_us = int(WINDOW.start.timestamp() * 1_000_000)
        day = WINDOW.start.date().isoformat()
        inside = [("b", 0), ("a", 1), ("b", 2), ("c", 3_599_999_999)]
        outside = [("d", -1), ("e", 3_600_000_000)]
        for n, (app, offset) in enumerate(inside + outside):
            await telemetry.upsert_item(
                {
                    "id": f"e{n}",
                    "pk": f"{app}:{day}",
                    "app_id": app,
                    "event_time_us": start_us + offset,
                }
            )
    assert await store.app_ids(WINDOW.start, WINDOW.end) == ["a", "b", "c"]


async def test_a_deleted_container_is_an_error_not_nothing_done_or_found(
    store: CosmosEvaluationStore, cosmos_server: CosmosServer
) -> None:
    manifest = build_manifest(WINDOW, [POLICY], ["a"], group_size=1, code_version="t")
    await store.stage_manifest(manifest)
    await store.upsert_results([result("a", 1.0)])
    async with CosmosClient(cosmos_server.endpoint, cosmos_server.key) as client:
        database = client.get_database_client(store.database)
        for name in ("evaluations", "state", "telemetry"):
            await database.delete_container(name)

    # Read as "nothing", a shard would redo every unit (its progress "empty"), a trigger would
    # stage the manifest again into nothing, and a window would have no apps to evaluate.
    with pytest.raises(ContainerNotFound, match="container 'state'"):
        await store.done_units(manifest.id)
    with pytest.raises(ContainerNotFound, match="container 'state'"):
        await store.load_manifest(manifest.id)
    with pytest.raises(ContainerNotFound, match="container 'evaluations'"):
        await store.results()
    # Every write fails: one error saying so, not a group of them.
    with pytest.raises(ContainerNotFound, match=r"container 'evaluations'.*3 of 3 results not"):
        await store.upsert_results([result("a", 1.0), result("b", 2.0), result("c", 3.0)])
    with pytest.raises(ContainerNotFound, match="container 'telemetry'"):
        await store.app_ids(WINDOW.start, WINDOW.end)
    unit = manifest.units[0]
    progress = ShardProgress(
        manifest_id=manifest.id, unit=unit, group_index=0, done_at=datetime.now(UTC)
    )
    with pytest.raises(ContainerNotFound, match="container 'state'"):
        await store.mark_done(progress)
