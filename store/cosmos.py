"""The Azure store: telemetry, quarantine and processor state in Cosmos DB (``azure.cosmos.aio``).

The containers, their indexing and the item shapes are in ``store.cosmos_items``; every call
runs under the common retry loop with the Cosmos error mapping (``store.cosmos_errors``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos.aio import ContainerProxy, CosmosClient
from azure.cosmos.exceptions import CosmosAccessConditionFailedError, CosmosResourceExistsError

from common import redact
from common.repeated import RepeatedFailure
from common.retry import Backoff
from schemas import QuarantineRecord, TelemetryDocument
from store.cosmos_config import DEFAULT_BACKOFF, CosmosSettings
from store.cosmos_connection import credential_from, open_containers
from store.cosmos_errors import call, map_error, read_item_or_none, request_failures
from store.cosmos_items import (
    COUNT_QUERY,
    EVENT_TIME_FIELD,
    MARKS_QUERY,
    QUARANTINE_INDEXING,
    QUARANTINE_QUERY,
    SEQUENCE_MARKS_QUERY,
    STATE_INDEXING,
    TELEMETRY_INDEXING,
    WINDOW_QUERY,
    cosmos_id,
    document_from_item,
    epoch_us,
    event_fields,
    from_epoch_us,
    quarantine_from_item,
    quarantine_item,
    snapshot_from_item,
    state_item,
    telemetry_item,
)
from store.exceptions import StoreConflict, StoreError
from store.ports import EventMark, StateSnapshot, window_days

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CosmosStore:
    """TelemetryStore on Cosmos DB.

    ``write`` upserts every item with at most ``max_concurrency`` requests in flight and returns
    once each was acknowledged. Every call retries throttling and transient failures on
    ``backoff`` (see store/cosmos_errors.py) before raising ``StoreUnavailable``; other failures
    raise ``StoreError`` at once. Open with ``async with``; a closed store raises ``StoreError``.
    """

    def __init__(
        self,
        endpoint: str,
        credential: Any,
        *,
        database: str = "evalstream",
        telemetry_container: str = "telemetry",
        quarantine_container: str = "quarantine",
        state_container: str = "state",
        evaluations_container: str = "evaluations",
        create_if_missing: bool = True,
        max_concurrency: int = 32,
        backoff: Backoff | None = None,
        connection_verify: bool = True,
        enable_endpoint_discovery: bool = True,
        close_credential: Callable[[], Any] | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.endpoint = endpoint
        # What errors and logs name: the endpoint without anything that may be a secret.
        self.shown_endpoint = redact.endpoint(endpoint)
        self.credential = credential
        self.database = database
        self.telemetry_container = telemetry_container
        self.quarantine_container = quarantine_container
        self.state_container = state_container
        self.evaluations_container = evaluations_container
        self.create_if_missing = create_if_missing
        self.max_concurrency = max_concurrency
        self.backoff = backoff or DEFAULT_BACKOFF
        self.connection_verify = connection_verify
        self.enable_endpoint_discovery = enable_endpoint_discovery
        self._close_credential = close_credential
        # Shared by every request of this store: a lasting failure is said once, not per
        # document and retry.
        self.failures = request_failures()
        self._client: CosmosClient | None = None
        self._containers: dict[str, ContainerProxy] = {}
        self._closed = False

    async def __aenter__(self) -> CosmosStore:
        if self._closed:
            raise StoreError(f"Cosmos store {self.shown_endpoint} is closed")
        if self._client is None:
            try:
                await self._open()
            except BaseException:
                # `async with` calls no __aexit__ when __aenter__ fails: release the credential.
                await self.close()
                raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        client, self._client = self._client, None
        self._containers = {}
        try:
            if client is not None:
                await asyncio.shield(client.close())
        finally:
            if self._close_credential is not None:
                await asyncio.shield(self._close_credential())

    async def _open(self) -> None:
        self._client, self._containers = await open_containers(
            self.endpoint,
            self.credential,
            self.database,
            (
                (self.telemetry_container, TELEMETRY_INDEXING),
                (self.quarantine_container, QUARANTINE_INDEXING),
                (self.state_container, STATE_INDEXING),
                (self.evaluations_container, None),
            ),
            create_if_missing=self.create_if_missing,
            connection_verify=self.connection_verify,
            enable_endpoint_discovery=self.enable_endpoint_discovery,
            backoff=self.backoff,
        )
        logger.info(
            "Cosmos store open",
            extra={"cosmos_endpoint": self.shown_endpoint, "cosmos_database": self.database},
        )

    def _container_named(self, name: str) -> ContainerProxy:
        if self._closed:
            raise StoreError(f"Cosmos store {self.shown_endpoint} is closed")
        container = self._containers.get(name)
        if container is None:
            raise StoreError(f"Cosmos store {self.shown_endpoint} is not open: use `async with`")
        return container

    async def _call(
        self, what: str, operation: Callable[[], Awaitable[T]], container: ContainerProxy
    ) -> T:
        return await call(what, operation, self.backoff, container.id, self.failures)

    async def ping(self) -> None:
        """Raise ``StoreError`` unless the state container can be read now (one try, no retry:
        readiness wants the present answer)."""
        state = self._container_named(self.state_container)
        try:
            await state.read()
        except AzureError as exc:
            raise map_error(exc, f"Cosmos store {self.endpoint}", state.id) from exc
        except Exception as exc:
            raise StoreError(
                f"Cosmos store {self.shown_endpoint} cannot be reached: "
                f"{redact.scrub(str(exc), self.endpoint)}"
            ) from exc

    # -- writes --------------------------------------------------------------------------------

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        telemetry = self._container_named(self.telemetry_container)
        quarantine = self._container_named(self.quarantine_container)
        # Quarantine records go with the first round (a batch of them alone is one round).
        records = [(quarantine, quarantine_item(rec), False) for rec in quarantined]
        refused: set[int] = set()
        for round_ in _rounds(documents) or [[]]:
            # A content-hash id names one event; an id the producer chose (event_id) may be
            # reused for another, which must not replace the stored one: those are created, not
            # upserted.
            items = [(telemetry, telemetry_item(doc), doc.event_id is not None) for doc in round_]
            written = await write_all(
                items + records,
                max_concurrency=self.max_concurrency,
                backoff=self.backoff,
                failures=self.failures,
            )
            refused.update(id(doc) for doc, ok in zip(round_, written, strict=False) if not ok)
            records = []
        return [doc for doc in documents if id(doc) in refused]

    async def save_state(self, snapshot: StateSnapshot, *, replace: bool = False) -> None:
        state = self._container_named(self.state_container)
        item = state_item(snapshot)
        await self._call(
            f"save state {snapshot.consumer_group}/{snapshot.partition}",
            functools.partial(state.upsert_item, item, no_response=True)
            if replace
            else functools.partial(_save_unless_behind, state, item),
            state,
        )

    # -- reads ---------------------------------------------------------------------------------

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None:
        state = self._container_named(self.state_container)
        item = await self._call(
            f"load state {consumer_group}/{partition}",
            functools.partial(read_item_or_none, state, cosmos_id(partition), consumer_group),
            state,
        )
        return None if item is None else snapshot_from_item(item)

    async def get_telemetry(self, document_id: str, pk: str) -> TelemetryDocument | None:
        telemetry = self._container_named(self.telemetry_container)
        item = await self._call(
            f"read telemetry {pk}/{document_id}",
            functools.partial(read_item_or_none, telemetry, cosmos_id(document_id), pk),
            telemetry,
        )
        return None if item is None else document_from_item(item)

    async def count(self, kind: str) -> int:
        if kind not in ("telemetry", "quarantine"):
            raise StoreError(f"unknown record kind {kind!r}: expected telemetry or quarantine")
        container = self._container_named(
            self.telemetry_container if kind == "telemetry" else self.quarantine_container
        )
        # Cross-partition: one partial count per partition range may come back; add them up.
        values = await self._call(
            f"count {kind}", functools.partial(_query_all, container, COUNT_QUERY, []), container
        )
        return int(sum(values))

    async def telemetry_window(
        self, app_ids: Sequence[str], start: datetime, end: datetime, page_size: int = 1000
    ) -> AsyncIterator[list[TelemetryDocument]]:
        telemetry = self._container_named(self.telemetry_container)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if end <= start:
            return
        bounds: list[dict[str, Any]] = [
            {"name": "@start", "value": epoch_us(start)},
            {"name": "@end", "value": epoch_us(end)},
        ]
        days = window_days(start, end)
        for app_id in app_ids:
            page: list[TelemetryDocument] = []
            # One single-partition query per day, in day order: no fan-out over the container,
            # and concatenating the days keeps time order.
            for day in days:
                pk = f"{app_id}:{day.isoformat()}"
                parameters = [{"name": "@pk", "value": pk}, *bounds]
                token: str | None = None
                while True:
                    items, token = await self._call(
                        f"read window {pk}",
                        functools.partial(
                            _query_page, telemetry, WINDOW_QUERY, parameters, pk, page_size, token
                        ),
                        telemetry,
                    )
                    page.extend(document_from_item(item) for item in items)
                    while len(page) >= page_size:
                        yield page[:page_size]
                        page = page[page_size:]
                    if token is None:
                        break
            if page:
                yield page

    async def marks_before(
        self, source: str, partition: str, sequence: int, limit: int
    ) -> list[EventMark]:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        telemetry = self._container_named(self.telemetry_container)
        parameters: list[dict[str, Any]] = [
            {"name": "@source", "value": source},
            {"name": "@partition", "value": partition},
            {"name": "@sequence", "value": sequence},
        ]
        what = f"read marks of partition {partition}"
        items = await self._call(
            what,
            functools.partial(
                _query_all,
                telemetry,
                MARKS_QUERY,
                [*parameters, {"name": "@limit", "value": limit}],
            ),
            telemetry,
        )
        if len(items) == limit:
            # The page may end inside a message's events: its lowest sequence is read whole
            # (when it is all there is), else left for the next call.
            lowest = items[-1]["sequence"]
            if items[0]["sequence"] == lowest:
                parameters[2]["value"] = lowest
                items = await self._call(
                    what,
                    functools.partial(_query_all, telemetry, SEQUENCE_MARKS_QUERY, parameters),
                    telemetry,
                )
            else:
                items = [item for item in items if item["sequence"] != lowest]
        return [
            EventMark(
                item["sequence"],
                from_epoch_us(item[EVENT_TIME_FIELD]),
                datetime.fromisoformat(item["enqueued_time"]),
            )
            for item in items
        ]

    async def quarantine_records(self, limit: int = 100) -> AsyncIterator[QuarantineRecord]:
        quarantine = self._container_named(self.quarantine_container)
        items = await self._call(
            "read quarantine",
            functools.partial(
                _query_all, quarantine, QUARANTINE_QUERY, [{"name": "@limit", "value": limit}]
            ),
            quarantine,
        )
        for item in items:
            yield quarantine_from_item(item)


def cosmos_store(settings: CosmosSettings) -> CosmosStore:
    """The Cosmos store the settings describe: ``key``, else DefaultAzureCredential."""
    endpoint, credential, close_credential = credential_from(settings)
    return CosmosStore(
        endpoint,
        credential,
        database=settings.database,
        telemetry_container=settings.telemetry_container,
        quarantine_container=settings.quarantine_container,
        state_container=settings.state_container,
        evaluations_container=settings.evaluations_container,
        create_if_missing=settings.create_if_missing,
        max_concurrency=settings.max_concurrency,
        backoff=settings.backoff,
        connection_verify=settings.connection_verify,
        enable_endpoint_discovery=settings.enable_endpoint_discovery,
        close_credential=close_credential,
    )


def _rounds(documents: Sequence[TelemetryDocument]) -> list[list[TelemetryDocument]]:
    """The batch in rounds that leave what SQLite's in-order upserts leave: the n-th document of
    each (pk, id) in the n-th round, so each is decided against what the one before it left (a
    re-read of the stored event after another event under its id replaces it, the other event is
    refused). Rounds run one after another, each concurrently (concurrent writes of one id would
    race); most batches have one. Of a content id only the last document: its earlier ones are
    the same event, which it replaces."""
    per_id: dict[tuple[str, str], list[TelemetryDocument]] = {}
    for doc in documents:
        per_id.setdefault((doc.pk, doc.id), []).append(doc)
    rounds: list[list[TelemetryDocument]] = []
    for same_id in per_id.values():
        for number, doc in enumerate(same_id if same_id[0].event_id else same_id[-1:]):
            if number == len(rounds):
                rounds.append([])
            rounds[number].append(doc)
    return rounds


async def write_all(
    items: Sequence[tuple[ContainerProxy, dict[str, Any], bool]],
    *,
    max_concurrency: int,
    backoff: Backoff,
    failures: RepeatedFailure | None = None,
) -> list[bool]:
    """Write every (container, item, keyed) with at most ``max_concurrency`` requests in
    flight: upserted, or when ``keyed`` created unless an item with the same event holds the
    id (see ``put_keyed``). Return per item whether it was written, once all are acknowledged,
    or raise the StoreError of the first that gave up."""
    written = [True] * len(items)
    if not items:
        return written
    pending = iter(enumerate(items))

    async def write_pending() -> None:
        # Workers share one iterator: bounded concurrency without a task per item.
        for index, (container, item, keyed) in pending:
            if keyed:
                written[index] = await put_keyed(container, item, backoff, failures)
            else:
                await call(
                    f"upsert {container.id}/{item['id']}",
                    functools.partial(container.upsert_item, item, no_response=True),
                    backoff,
                    container.id,
                    failures,
                )

    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(max_concurrency, len(items))):
                group.create_task(write_pending())
    except BaseExceptionGroup as failures:
        # The first worker to give up cancelled the others; the batch is not durable and the
        # caller retries all of it (every write is idempotent).
        store_errors, others = failures.split(StoreError)
        if others is not None or store_errors is None:
            raise
        error = _first_leaf(store_errors)
        raise error from error.__cause__
    return written


async def put_keyed(
    container: ContainerProxy,
    item: dict[str, Any],
    backoff: Backoff,
    failures: RepeatedFailure | None = None,
) -> bool:
    """Create the item; if its id exists, replace it only when the stored item holds the same
    event (a re-read or replay). False: a different event holds the id, nothing written."""
    name = f"{container.id}/{item['id']}"
    try:
        await call(
            f"create {name}",
            functools.partial(container.create_item, item, no_response=True),
            backoff,
            container.id,
            failures,
        )
        return True
    except StoreConflict:
        pass
    stored = await call(
        f"read {name}",
        functools.partial(container.read_item, item["id"], partition_key=item["pk"]),
        backoff,
        container.id,
        failures,
    )
    if event_fields(stored) != event_fields(item):
        return False
    await call(
        f"upsert {name}",
        functools.partial(container.upsert_item, item, no_response=True),
        backoff,
        container.id,
        failures,
    )
    return True


async def _save_unless_behind(state: ContainerProxy, item: dict[str, Any]) -> None:
    """Write a snapshot item unless the stored one covers a later position (a late batch of an
    owner that lost the partition must not replace the new owner's snapshot). The write is
    conditional on the item read (its etag, or its absence): a write that came between is read
    and compared again."""
    covered = int(item["covered_sequence"])
    while True:
        stored = await read_item_or_none(state, item["id"], item["pk"])
        try:
            if stored is None:
                await state.create_item(item, no_response=True)
            elif int(stored["covered_sequence"]) > covered:
                return
            else:
                await state.replace_item(
                    item["id"],
                    item,
                    etag=stored["_etag"],
                    match_condition=MatchConditions.IfNotModified,
                    no_response=True,
                )
        except (CosmosAccessConditionFailedError, CosmosResourceExistsError):
            continue
        return


async def _query_all(
    container: ContainerProxy, query: str, parameters: list[dict[str, Any]]
) -> list[Any]:
    return [item async for item in container.query_items(query, parameters=parameters)]


async def _query_page(
    container: ContainerProxy,
    query: str,
    parameters: list[dict[str, Any]],
    pk: str,
    page_size: int,
    token: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a single-partition query and the token of the next (None: no more).

    A fresh pager per page, resumed from the token, so a failed page is retried alone."""
    # An AsyncPageIterator; its type is declared as a plain AsyncIterator.
    pages: Any = container.query_items(
        query, parameters=parameters, partition_key=pk, max_item_count=page_size
    ).by_page(token)
    async for page in pages:
        return [item async for item in page], pages.continuation_token
    return [], None


def _first_leaf(group: BaseExceptionGroup[StoreError]) -> StoreError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first
