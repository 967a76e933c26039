"""The Cosmos DB evaluation store: results in the ``evaluations`` container, shard progress and
manifests in the ``state`` container.

Results use the partition key ``<app_id>:<YYYY-MM-DD>`` of the window start; progress items
share one partition per manifest (``coldpath:progress:<manifest id>``), so reading a manifest's
progress is one single-partition query; manifests live under ``coldpath:manifest:<id>``. Every
call runs under the common retry loop with the Cosmos error mapping: a throttled (429) or
briefly unavailable account slows the shard down instead of failing it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

import orjson
from azure.cosmos.aio import ContainerProxy, CosmosClient

from common import redact
from common.errors import is_retryable
from common.retry import Backoff
from schemas import EvaluationResult, JobManifest, ShardProgress
from store.cosmos_config import DEFAULT_BACKOFF, CosmosSettings
from store.cosmos_connection import credential_from, open_containers
from store.cosmos_errors import call, request_failures
from store.exceptions import StoreError

T = TypeVar("T")

WINDOW_START_FIELD = "window_start_us"
MAX_CONCURRENCY = 16


def _epoch_us(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def result_item(result: EvaluationResult) -> dict[str, Any]:
    item: dict[str, Any] = orjson.loads(result.model_dump_json())
    item[WINDOW_START_FIELD] = _epoch_us(result.window.start)
    return item


class CosmosEvaluationStore:
    """EvaluationStore on Cosmos DB. An async context manager; reuse after close raises."""

    def __init__(
        self,
        endpoint: str,
        credential: Any,
        *,
        database: str,
        evaluations_container: str = "evaluations",
        state_container: str = "state",
        telemetry_container: str = "telemetry",
        create_if_missing: bool = True,
        backoff: Backoff | None = None,
        connection_verify: bool = True,
        enable_endpoint_discovery: bool = True,
        close_credential: Callable[[], Any] | None = None,
    ) -> None:
        self._close_credential = close_credential
        self.endpoint = endpoint
        # What errors name: the endpoint without anything that may be a secret.
        self.shown_endpoint = redact.endpoint(endpoint)
        self.credential = credential
        self.database = database
        self.names = (evaluations_container, state_container, telemetry_container)
        self.create_if_missing = create_if_missing
        self.backoff = backoff or DEFAULT_BACKOFF
        self.connection_verify = connection_verify
        self.enable_endpoint_discovery = enable_endpoint_discovery
        # Shared by every request: a lasting failure is said once, not per result and retry.
        self.failures = request_failures()
        self._client: CosmosClient | None = None
        self._containers: dict[str, ContainerProxy] = {}
        self._closed = False

    async def __aenter__(self) -> CosmosEvaluationStore:
        if self._closed:
            raise StoreError(f"Cosmos evaluation store {self.shown_endpoint} is closed")
        self._client, self._containers = await open_containers(
            self.endpoint,
            self.credential,
            self.database,
            [(name, None) for name in self.names],
            create_if_missing=self.create_if_missing,
            connection_verify=self.connection_verify,
            enable_endpoint_discovery=self.enable_endpoint_discovery,
            backoff=self.backoff,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed = True
        client, self._client = self._client, None
        try:
            if client is not None:
                await asyncio.shield(client.close())
        finally:
            if self._close_credential is not None:
                await asyncio.shield(self._close_credential())

    def _container(self, index: int) -> ContainerProxy:
        if self._closed or self._client is None:
            raise StoreError(f"Cosmos evaluation store {self.shown_endpoint} is not open")
        return self._containers[self.names[index]]

    async def _call(
        self, what: str, operation: Callable[[], Awaitable[T]], container: ContainerProxy
    ) -> T:
        return await call(what, operation, self.backoff, container.id, self.failures)

    async def upsert_results(self, results: Sequence[EvaluationResult]) -> None:
        """Upsert every result, ``MAX_CONCURRENCY`` at a time. A write that gives up stops the
        others from starting (those in flight finish); then one error is raised, not a group
        of them: the first that no retry mends (else the first), with how many failed."""
        container = self._container(0)
        pending = iter(results)
        failures: list[StoreError] = []
        written = 0

        async def write_pending() -> None:
            nonlocal written
            # Workers share one iterator: bounded concurrency without a task per result.
            for result in pending:
                if failures:
                    return
                item = result_item(result)
                try:
                    await self._call(
                        f"upsert result {result.id}",
                        functools.partial(container.upsert_item, item),
                        container,
                    )
                except StoreError as exc:
                    failures.append(exc)
                else:
                    written += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(min(MAX_CONCURRENCY, len(results))):
                group.create_task(write_pending())
        if failures:
            first = next((exc for exc in failures if not is_retryable(exc)), failures[0])
            raise type(first)(
                f"{first} ({len(failures)} writes failed; {len(results) - written} of "
                f"{len(results)} results not written)",
                retryable=first.retryable,
                retry_after=first.retry_after,
            ) from first

    async def results(
        self,
        app_id: str | None = None,
        policy: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[EvaluationResult]:
        clauses = ["c.type = 'evaluation'"]
        parameters: list[dict[str, Any]] = [{"name": "@limit", "value": limit}]
        if app_id is not None:
            clauses.append("c.app_id = @app")
            parameters.append({"name": "@app", "value": app_id})
        if policy is not None:
            clauses.append("c.policy = @policy")
            parameters.append({"name": "@policy", "value": policy})
        if since is not None:
            clauses.append(f"c.{WINDOW_START_FIELD} >= @since")
            parameters.append({"name": "@since", "value": _epoch_us(since)})
        # Fixed clause texts only; values are parameters. A listing for people: may span
        # partitions (windows of many days and apps).
        query = (
            f"SELECT TOP @limit * FROM c WHERE {' AND '.join(clauses)} "  # noqa: S608
            f"ORDER BY c.{WINDOW_START_FIELD} DESC"
        )
        items = await self._query(0, query, parameters, None, "read evaluation results")
        return [EvaluationResult.model_validate(_strip(item)) for item in items]

    async def done_units(self, manifest_id: str) -> set[str]:
        pk = f"coldpath:progress:{manifest_id}"
        query = f"SELECT c.unit_key FROM c WHERE c.pk = '{_quote(pk)}'"  # noqa: S608
        items = await self._query(1, query, [], pk, "read shard progress")
        return {item["unit_key"] for item in items}

    async def mark_done(self, progress: ShardProgress) -> None:
        container = self._container(1)
        item = orjson.loads(progress.model_dump_json())
        item.update(
            id=_item_id(progress.unit.key),
            pk=f"coldpath:progress:{progress.manifest_id}",
            unit_key=progress.unit.key,
        )
        await self._call("mark unit done", lambda: container.upsert_item(item), container)

    async def stage_manifest(self, manifest: JobManifest) -> None:
        container = self._container(1)
        item = {
            "id": manifest.id,
            "pk": f"coldpath:manifest:{manifest.id}",
            "manifest": orjson.loads(manifest.model_dump_json()),
        }
        # Same id, same content by construction: an upsert is as good as insert-if-absent.
        await self._call("stage manifest", lambda: container.upsert_item(item), container)

    async def load_manifest(self, manifest_id: str) -> JobManifest | None:
        pk = f"coldpath:manifest:{manifest_id}"
        query = f"SELECT * FROM c WHERE c.pk = '{_quote(pk)}'"  # noqa: S608
        items = await self._query(1, query, [], pk, "load manifest")
        return JobManifest.model_validate(items[0]["manifest"]) if items else None

    async def app_ids(self, start: datetime, end: datetime) -> list[str]:
        # Planning only: the one cross-partition read of the cold path, once per window.
        query = (
            "SELECT DISTINCT VALUE c.app_id FROM c WHERE c.event_time_us >= @start "
            "AND c.event_time_us < @end"
        )
        parameters = [
            {"name": "@start", "value": _epoch_us(start)},
            {"name": "@end", "value": _epoch_us(end)},
        ]
        items = await self._query(2, query, parameters, None, "list apps in window")
        return sorted(set(items))

    async def _query(
        self,
        index: int,
        query: str,
        parameters: list[dict[str, Any]],
        pk: str | None,
        what: str,
    ) -> list[Any]:
        container = self._container(index)

        async def run() -> list[Any]:
            options: dict[str, Any] = {"parameters": parameters}
            if pk is not None:
                options["partition_key"] = pk
            return [item async for item in container.query_items(query, **options)]

        # A query answers no rows for "nothing there"; its 404 is the container (or database)
        # gone, which must not read as "no progress", "no manifest" or "no apps".
        return await self._call(what, run, container)


def _item_id(key: str) -> str:
    # Cosmos ids must not contain '/', '\\', '?', '#'; unit keys hold app ids and policy names.
    return key.replace("\x1f", "~")


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _strip(item: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in item.items()
        if not key.startswith("_") and key != WINDOW_START_FIELD
    }


def cosmos_evaluation_store(settings: CosmosSettings) -> CosmosEvaluationStore:
    """The evaluation store the Cosmos settings describe (``key``, else DefaultAzureCredential)."""
    endpoint, credential, close_credential = credential_from(settings)
    return CosmosEvaluationStore(
        endpoint,
        credential,
        database=settings.database,
        evaluations_container=settings.evaluations_container,
        state_container=settings.state_container,
        telemetry_container=settings.telemetry_container,
        create_if_missing=settings.create_if_missing,
        backoff=settings.backoff,
        connection_verify=settings.connection_verify,
        enable_endpoint_discovery=settings.enable_endpoint_discovery,
        close_credential=close_credential,
    )
