"""The Azure event source: Event Hubs (``azure.eventhub.aio``) with Blob checkpoints.

EventHubsSource runs the SDK's load-balanced EventProcessor (``receive_batch``) and drives a
BatchHandler with it, keeping the port's promises the SDK alone does not keep: a failed batch is
retried in place (the SDK would carry on after it), a batch in flight is finished before its
partition closes (the SDK cancels it), empty batches are not delivered, and an event delivered
twice after a reconnect is delivered once. The sink is in ``eventhubs_producer``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.eventhub import CloseReason as SdkCloseReason
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.exceptions import EventHubError
from azure.storage.blob.aio import ContainerClient

from common.errors import Misconfigured
from common.retry import retry, until_first
from stream.config import ProcessorSettings
from stream.delivery import HANDLER_BACKOFF, any_failure, deliver
from stream.exceptions import PartitionLost, SourceError
from stream.ports import BatchHandler, CloseReason, ReceivedEvent
from stream.sources.eventhubs_config import EventHubsSettings, check_settings
from stream.sources.eventhubs_partition import CheckpointStore, EventHubsPartition, read_end
from stream.sources.eventhubs_sdk import checkpoint_error, default_credential, map_error
from stream.sources.eventhubs_start import CoveredSequences, StartingPositions

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.eventhub.aio import PartitionContext as SdkPartitionContext

logger = logging.getLogger(__name__)

SOURCE_NAME = "eventhubs"
# The checkpoint store pins this Storage API version; the container check uses the same one
# so both work against the same services (Azurite included).
CHECKPOINT_API_VERSION = "2019-07-07"
# The Storage SDK's retries of the container check at start: waits of about 1, 3 and 5 s. Its
# default (15, 18 and 24 s, plus jitter) kept an unreachable account unreported for 90 s per
# start; whoever runs the source retries the start itself.
CHECK_RETRY: dict[str, Any] = {"retry_total": 3, "initial_backoff": 1, "increment_base": 2}

_STARTING_POSITIONS: dict[str, str] = {"earliest": "-1", "latest": "@latest"}
_CLOSE_REASONS: dict[SdkCloseReason, CloseReason] = {
    SdkCloseReason.SHUTDOWN: CloseReason.SHUTDOWN,
    SdkCloseReason.OWNERSHIP_LOST: CloseReason.OWNERSHIP_LOST,
}


class EventHubsSource:
    """EventSource over an Event Hub, load-balanced with other instances through Blob storage.

    ``run`` opens the checkpoint store (creating its container when missing) and a consumer
    client, delivers batches until ``stop`` is set, then closes the client: each owned
    partition finishes its batch in flight and closes with CloseReason.SHUTDOWN.
    """

    def __init__(
        self,
        settings: EventHubsSettings,
        processor: ProcessorSettings,
        *,
        credential_factory: Callable[[], AsyncTokenCredential] | None = None,
        client_options: dict[str, Any] | None = None,
        covered: CoveredSequences | None = None,
    ) -> None:
        check_settings(settings, checkpoints=True)
        self.settings = settings
        self.processor = processor
        self.credential_factory = credential_factory or default_credential
        # Extra EventHubConsumerClient keyword arguments (retry policy, transport, ...).
        self.client_options = dict(client_options or {})
        # What each partition's snapshot covers (the processor's store): where a partition
        # without a checkpoint starts, when it has a snapshot (see StartingPositions).
        self.covered = covered
        self._handler: BatchHandler | None = None
        self._stop = asyncio.Event()
        self._client: EventHubConsumerClient | None = None
        self._store: CheckpointStore | None = None
        self._credential: AsyncTokenCredential | None = None
        self._partitions: dict[str, EventHubsPartition] = {}
        # Partitions whose close is running: the checkpoint store does not claim them.
        self._closing: set[str] = set()
        self.errors = 0

    @property
    def needs_credential(self) -> bool:
        settings = self.settings
        return settings.connection_string is None or settings.checkpoint_connection_string is None

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        if self._handler is not None:
            raise SourceError("EventHubsSource.run is already running")
        self._handler, self._stop = handler, stop
        credential = self.credential_factory() if self.needs_credential else None
        self._credential = credential
        try:
            store = self._checkpoint_store(credential)
            store.closing, store.running = self._closing, self._partitions
            starting = StartingPositions(
                _STARTING_POSITIONS[self.settings.starting_position], self.covered
            )
            store.starting_positions = starting
            async with store:
                await self._ensure_container(credential)
                client = self._consumer_client(store, credential)
                starting.ends = functools.partial(read_end, client)
                self._client, self._store = client, store
                async with client:
                    await self._check_hub(client, stop)
                    await self._receive(client, stop)
        finally:
            self._handler, self._client, self._store = None, None, None
            self._credential = None
            self._partitions.clear()
            if credential is not None:
                await credential.close()

    async def _check_hub(self, client: EventHubConsumerClient, stop: asyncio.Event) -> None:
        """Reach the hub once before receiving. The SDK's receive loop meets a missing hub or
        an unreachable namespace only in its load-balancing rounds, which report it to
        ``on_error`` and try again, for ever, owning no partition: a missing hub is a
        configuration error (raised), an unreachable namespace a retryable one (whoever runs
        the source decides how long to retry). A stop meanwhile ends the check (the SDK's own
        retries of it take seconds)."""
        checking = asyncio.ensure_future(client.get_partition_ids())
        try:
            await until_first(checking, stop)
        finally:
            if not checking.done():
                checking.cancel()
                await asyncio.wait([checking])
        if checking.cancelled():
            return
        try:
            checking.result()
        except (EventHubError, AzureError) as exc:
            raise map_error(exc, "start check", self.settings) from exc

    async def _receive(self, client: EventHubConsumerClient, stop: asyncio.Event) -> None:
        assert self._store is not None
        receiving = asyncio.create_task(
            client.receive_batch(
                self._on_event_batch,
                max_batch_size=self.processor.batch_size,
                max_wait_time=self.processor.batch_wait_s,
                # The SDK reads a per-partition mapping with get() only (typed as a dict).
                starting_position=cast(dict[str, Any], self._store.starting_positions),
                prefetch=self.settings.prefetch,
                on_error=self._on_error,
                on_partition_initialize=self._on_partition_initialize,
                on_partition_close=self._on_partition_close,
            ),
            name="eventhubs-receive",
        )
        stopping = asyncio.create_task(stop.wait(), name="eventhubs-stop")
        try:
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if receiving.done():
                # receive_batch only returns on close; anything else is a configuration error.
                try:
                    receiving.result()
                except (EventHubError, AzureError) as exc:
                    raise map_error(exc, "receive") from exc
                except ValueError as exc:
                    raise SourceError(f"Event Hubs receive refused: {exc}") from exc
                raise SourceError("Event Hubs receive ended before stop was requested")
            # close() stops the processor: partitions finish their batch, close with SHUTDOWN
            # and release their ownership. receive_batch itself would only notice at its next
            # load-balancing round, so it is cancelled once close has returned.
            await client.close()
        finally:
            for task in (stopping, receiving):
                if not task.done():
                    task.cancel()
            await asyncio.wait({receiving, stopping})

    async def _on_partition_initialize(self, sdk: SdkPartitionContext) -> None:
        assert self._handler is not None and self._client is not None and self._store is not None
        partition = EventHubsPartition(
            sdk,
            self._client,
            self._store,
            functools.partial(self._ensure_container, self._credential),
        )
        self._partitions[partition.partition_id] = partition
        handler = self._handler
        # The SDK would log a failed initialisation and deliver batches anyway: retry until it
        # works (or the partition is closed, which cancels this).
        try:
            await retry(
                lambda: handler.on_partition_initialize(partition),
                backoff=HANDLER_BACKOFF,
                what="partition initialisation",
                retryable=any_failure,
                log_fields={"partition": partition.partition_id},
                log_traceback=True,
            )
        except Misconfigured as exc:
            # The handler gave up, said so once and stops the source; raised to the SDK it
            # would be logged again for each partition. Its batches are not delivered.
            logger.debug(
                "partition not initialised: %s",
                type(exc).__name__,
                extra={"partition": partition.partition_id},
            )
            return
        partition.initialized = True

    async def _on_event_batch(self, sdk: SdkPartitionContext, events: list[EventData]) -> None:
        partition = self._partitions.get(str(sdk.partition_id))
        if partition is None or not partition.initialized:
            return
        if partition.lost:
            # The ownership check saw another owner before the SDK did. The SDK closes the
            # partition when its load balancer sees that owner, but not when the owner's claim
            # is gone by then (it died before receiving): it claims the partition back and
            # keeps this receive running, which must not deliver. Ending the receive makes the
            # SDK close the partition and start it afresh from its checkpoint once it claims it.
            raise PartitionLost(
                f"{partition.lost_reason}: its receive ends and the partition starts again from "
                "its checkpoint if it comes back"
            )
        if partition.abandoned:
            return
        if events:
            partition.add(partition.received(events))
        # The SDK hands over whatever its buffer holds, often a single event when the
        # processor keeps up: batches are gathered here, up to batch_size or batch_wait_s.
        # An empty call (nothing arrived for max_wait_time) lets the last events go.
        for batch in partition.ready(self.processor.batch_size, self.processor.batch_wait_s):
            if not await self._deliver(partition, batch):
                return
        if not events and not partition.pending:
            # Nothing arrived for max_wait_time and the last events went: the handler may
            # checkpoint the end of a burst (without this, not until a next event came).
            assert self._handler is not None
            await self._handler.on_idle(partition)

    async def _deliver(self, partition: EventHubsPartition, batch: list[ReceivedEvent]) -> bool:
        """Run the handler on ``batch`` until it succeeds (True) or the partition is closing
        or the source stopping (False: the batch is abandoned, and so are later ones)."""
        handler = self._handler
        assert handler is not None
        delivered = await deliver(
            lambda: partition.attempt(
                handler.on_batch(partition, batch), stopping=self._stop.is_set
            ),
            partition_id=partition.partition_id,
            first_sequence=batch[0].sequence,
            closing=lambda: partition.closing or partition.lost,
            stop=self._stop,
        )
        if not delivered:
            partition.abandoned = True
        return delivered

    async def _on_partition_close(self, sdk: SdkPartitionContext, reason: SdkCloseReason) -> None:
        partition = self._partitions.pop(str(sdk.partition_id), None)
        if partition is None:
            return
        # Not claimed again until this close ended (see CheckpointStore).
        self._closing.add(partition.partition_id)
        try:
            await self._close(partition, reason)
        finally:
            self._closing.discard(partition.partition_id)

    async def _close(self, partition: EventHubsPartition, reason: SdkCloseReason) -> None:
        partition.closing = True
        if reason is SdkCloseReason.OWNERSHIP_LOST:
            # The SDK says so after a failed receive too, and the partition may have another
            # owner by then: the batch in flight may finish after that owner saved its
            # snapshot and checkpoint, and must not write its own over them.
            partition.let_go_by_sdk()
        if not partition.initialized:
            partition.closed = True
            return
        # Never close a partition under a batch still running (see EventHubsPartition.checkpoint).
        await partition.settled()
        assert self._handler is not None
        try:
            await self._handler.on_partition_close(partition, _CLOSE_REASONS[reason])
        finally:
            partition.closed = True

    async def _on_error(self, sdk: SdkPartitionContext | None, error: Exception) -> None:
        # The SDK recovers by itself (reconnects, re-claims partitions from their checkpoint);
        # this is where its errors become visible. The service's are errors, not warnings:
        # while one lasts, partitions are not received (an unreachable namespace, a hub
        # deleted meanwhile); a receive this source ended itself (PartitionLost) is a warning.
        self.errors += 1
        if sdk is not None:
            partition = self._partitions.get(str(sdk.partition_id))
            if partition is not None:
                partition.receive_error = f"{type(error).__name__}: {error}"
        service = isinstance(error, (EventHubError, AzureError))
        logger.log(
            logging.ERROR if service else logging.WARNING,
            "Event Hubs error",
            extra={
                "partition": None if sdk is None else sdk.partition_id,
                "error": str(map_error(error, "receive", self.settings))
                if service
                else f"{type(error).__name__}: {error}",
            },
        )

    def _checkpoint_store(self, credential: AsyncTokenCredential | None) -> CheckpointStore:
        return checkpoint_store(self.settings, credential)

    async def _ensure_container(self, credential: AsyncTokenCredential | None) -> None:
        # With a missing container the checkpoint store fails its ownership claims quietly.
        settings = self.settings
        if settings.checkpoint_connection_string is not None:
            container = ContainerClient.from_connection_string(
                settings.checkpoint_connection_string.get_secret_value(),
                settings.checkpoint_container,
                api_version=CHECKPOINT_API_VERSION,
                **CHECK_RETRY,
            )
        else:
            assert settings.checkpoint_account_url is not None
            container = ContainerClient(
                settings.checkpoint_account_url,
                settings.checkpoint_container,
                credential=credential,
                api_version=CHECKPOINT_API_VERSION,
                **CHECK_RETRY,
            )
        async with container:
            try:
                await container.get_container_properties()
            except ResourceNotFoundError:
                try:
                    await container.create_container()
                except ResourceExistsError:
                    pass
                except AzureError as exc:
                    raise checkpoint_error(exc, "container creation", settings) from exc
            except AzureError as exc:
                raise checkpoint_error(exc, "container check", settings) from exc

    def _consumer_client(
        self, store: CheckpointStore, credential: AsyncTokenCredential | None
    ) -> EventHubConsumerClient:
        settings = self.settings
        return consumer_client(
            settings,
            self.processor.consumer_group,
            credential,
            checkpoint_store=store,
            load_balancing_interval=settings.load_balancing_interval_s,
            partition_ownership_expiration_interval=settings.partition_ownership_expiration_s,
            **self.client_options,
        )


def checkpoint_store(
    settings: EventHubsSettings, credential: AsyncTokenCredential | None
) -> CheckpointStore:
    """The checkpoint store of the configured container, by connection string or credential."""
    if settings.checkpoint_connection_string is not None:
        store = CheckpointStore.from_connection_string(
            settings.checkpoint_connection_string.get_secret_value(),
            settings.checkpoint_container,
        )
        # The SDK's classmethod is typed as returning its own class.
        assert isinstance(store, CheckpointStore)
        return store
    assert settings.checkpoint_account_url is not None
    return CheckpointStore(
        settings.checkpoint_account_url, settings.checkpoint_container, credential=credential
    )


@dataclass(frozen=True)
class PartitionPosition:
    """A partition's last sequence number (-1: none yet) and the consumer group's checkpoint
    in it (None: none)."""

    partition: str
    last_sequence: int
    checkpoint: int | None


async def partition_positions(
    settings: EventHubsSettings,
    consumer_group: str,
    *,
    checkpoints: bool = True,
    client_options: dict[str, Any] | None = None,
) -> list[PartitionPosition]:
    """Every partition of the hub, with its end (from the service) and, when ``checkpoints``,
    the consumer group's checkpoint (read only: a missing container holds none). A hub that
    does not exist is a ``SourceMisconfigured`` naming it; ``client_options`` are the consumer
    client's (``retry_total=0``: one try, no backoff)."""
    check_settings(settings, checkpoints=checkpoints)
    needs_credential = settings.connection_string is None or (
        checkpoints and settings.checkpoint_connection_string is None
    )
    credential = default_credential() if needs_credential else None
    try:
        client = consumer_client(settings, consumer_group, credential, **(client_options or {}))
        async with client:
            ends = {
                partition: await read_end(client, partition)
                for partition in await client.get_partition_ids()
            }
            # The SDK's processor keys checkpoints by the namespace as the client parsed it
            # (host, and port): the same attribute it reads.
            namespace = str(client._address.hostname)
        rows: list[dict[str, Any]] = []
        if checkpoints:
            store = checkpoint_store(settings, credential)
            async with store:
                with contextlib.suppress(ResourceNotFoundError):
                    rows = await store.read_checkpoints(
                        namespace, settings.eventhub_name, consumer_group
                    )
    except (EventHubError, AzureError) as exc:
        raise map_error(exc, "partition positions read", settings) from exc
    except ValueError as exc:  # the SDK's word for a connection string it cannot use
        raise SourceError(f"Event Hubs partition positions refused: {exc}") from exc
    finally:
        if credential is not None:
            await credential.close()
    checkpointed = {str(row["partition_id"]): int(row["sequence_number"]) for row in rows}
    return [
        PartitionPosition(
            partition,
            end.last_sequence,
            checkpointed[partition] if checkpointed.get(partition, -1) >= 0 else None,
        )
        for partition, end in ends.items()
    ]


def consumer_client(
    settings: EventHubsSettings,
    consumer_group: str,
    credential: AsyncTokenCredential | None,
    **options: Any,
) -> EventHubConsumerClient:
    """A consumer client of the configured hub, by connection string or by ``credential``."""
    if settings.connection_string is not None:
        return EventHubConsumerClient.from_connection_string(
            settings.connection_string.get_secret_value(),
            eventhub_name=settings.eventhub_name,
            consumer_group=consumer_group,
            **options,
        )
    assert settings.fully_qualified_namespace is not None and credential is not None
    return EventHubConsumerClient(
        fully_qualified_namespace=settings.fully_qualified_namespace,
        eventhub_name=settings.eventhub_name,
        consumer_group=consumer_group,
        credential=credential,
        **options,
    )


def eventhubs_source(
    settings: EventHubsSettings,
    processor: ProcessorSettings,
    covered: CoveredSequences | None = None,
) -> EventHubsSource:
    return EventHubsSource(settings, processor, covered=covered)
