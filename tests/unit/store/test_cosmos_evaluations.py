"""How the Cosmos evaluation store (store/cosmos_evaluations.py) reports failed result writes,
without a server: one mapped error with how many failed, never a group of them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from azure.cosmos.exceptions import CosmosHttpResponseError

from common.retry import Backoff
from schemas import EvaluationResult, Window
from schemas.evaluation import evaluation_pk, evaluation_result_id
from store.cosmos_evaluations import CosmosEvaluationStore
from store.exceptions import ContainerNotFound, StoreUnavailable

WINDOW = Window(start=datetime(2026, 3, 1, 23, tzinfo=UTC), end=datetime(2026, 3, 2, 0, tzinfo=UTC))


class FakeContainer:
    """Answers each upsert with the status its item's app is given (200 when none)."""

    def __init__(self, statuses: dict[str, int]) -> None:
        self.id = "evaluations"
        self.statuses = statuses
        self.stored: list[str] = []

    async def upsert_item(self, item: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # every write in flight together, as against a server
        status = self.statuses.get(item["app_id"], 200)
        if status != 200:
            raise CosmosHttpResponseError(status_code=status, message="refused")  # type: ignore[no-untyped-call]
        self.stored.append(item["app_id"])


def result(app_id: str) -> EvaluationResult:
    return EvaluationResult(
        id=evaluation_result_id(app_id, "q", 1, WINDOW, "latency", 1),
        pk=evaluation_pk(app_id, WINDOW),
        app_id=app_id,
        policy="q",
        policy_version=1,
        metric="latency",
        metric_version=1,
        window=WINDOW,
        values={"p95": 1.0},
        sample_size=10,
        status="ok",
        manifest_id="m",
        computed_at=datetime.now(UTC),
    )


def opened(container: FakeContainer) -> CosmosEvaluationStore:
    store = CosmosEvaluationStore(
        "https://cosmos.example",
        "key",
        database="db",
        backoff=Backoff(initial_s=0.0, max_s=0.0, max_retries=0),
    )
    store._client = object()  # type: ignore[assignment]
    store._containers = {"evaluations": container}  # type: ignore[dict-item]
    return store


async def test_several_failed_writes_raise_the_one_no_retry_mends_with_their_count() -> None:
    # Throttled first (429, retryable), then the container gone (404): the 404 is what to act on.
    container = FakeContainer({"a": 429, "b": 404, "c": 404})
    with pytest.raises(ContainerNotFound) as raised:
        await opened(container).upsert_results([result(app) for app in "abcd"])
    assert "container 'evaluations'" in str(raised.value)
    assert "(3 writes failed; 3 of 4 results not written)" in str(raised.value)
    assert not raised.value.retryable
    assert container.stored == ["d"]


async def test_only_passing_failures_raise_a_retryable_error() -> None:
    container = FakeContainer({"a": 429, "b": 503})
    with pytest.raises(StoreUnavailable) as raised:
        await opened(container).upsert_results([result("a"), result("b")])
    assert raised.value.retryable
    assert "(2 writes failed; 2 of 2 results not written)" in str(raised.value)
