"""The Azure event source and sink: Event Hubs (``azure.eventhub.aio``) with Blob checkpoints.

EventHubsSource runs the SDK's load-balanced EventProcessor (``receive_batch``) and drives a
BatchHandler with it, keeping the port's promises the SDK alone does not keep: a failed batch is
retried in place (the SDK would carry on after it), a batch in flight is finished before its
partition closes (the SDK cancels it), empty batches are not delivered, and an event delivered
twice after a reconnect is delivered once. EventHubsSink sends per partition key in batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.eventhub import CloseReason as SdkCloseReason
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient, EventHubProducerClient
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.exceptions import (
    AuthenticationError,
    ClientClosedError,
    ConnectError,
    ConnectionLostError,
    EventDataError,
    EventDataSendError,
    EventHubError,
    OperationTimeoutError,
)
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore
from azure.storage.blob.aio import ContainerClient

from stream.exceptions import SourceError, SourceUnavailable
from stream.ports import BatchHandler, CloseReason, ReceivedEvent
from stream.retry import backoff, deliver

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.eventhub.aio import PartitionContext as SdkPartitionContext

    from evalstream.settings import EventHubsSettings, ProcessorSettings

logger = logging.getLogger(__name__)

SOURCE_NAME = "eventhubs"
# The checkpoint store pins this Storage API version; the container check uses the same one
# so both work against the same services (Azurite included).
CHECKPOINT_API_VERSION = "2019-07-07"

_STARTING_POSITIONS: dict[str, str] = {"earliest": "-1", "latest": "@latest"}
_CLOSE_REASONS: dict[SdkCloseReason, CloseReason] = {
    SdkCloseReason.SHUTDOWN: CloseReason.SHUTDOWN,
    SdkCloseReason.OWNERSHIP_LOST: CloseReason.OWNERSHIP_LOST,
}
_SEQUENCE = b"x-opt-sequence-number"
_OFFSET = b"x-opt-offset"
_ENQUEUED = b"x-opt-enqueued-time"
_RETRYABLE_SEND_CONDITIONS = ("server-busy", "timeout", "operation-cancelled")


def map_error(exc: Exception, action: str) -> SourceError:
    """The project's error for an Event Hubs or Storage SDK error (raise it ``from exc``)."""
    message = f"Event Hubs {action} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, (AuthenticationError, ClientAuthenticationError, EventDataError)):
        return SourceError(message)
    if isinstance(exc, ClientClosedError):
        return SourceError(message)
    if isinstance(exc, (ConnectError, ConnectionLostError, OperationTimeoutError)):
        return SourceUnavailable(message)
    if isinstance(exc, EventDataSendError):
        # azure-eventhub does not retry a send the service rejected as busy.
        text = f"{exc.error or ''} {exc}".lower()
        if any(condition in text for condition in _RETRYABLE_SEND_CONDITIONS):
            return SourceUnavailable(message)
        return SourceError(message)
    if isinstance(exc, EventHubError):
        return SourceUnavailable(message)
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return SourceUnavailable(message)
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        if status == 429 or status >= 500:
            return SourceUnavailable(message, retry_after=_retry_after(exc))
        return SourceError(message)
    if isinstance(exc, AzureError):
        return SourceUnavailable(message)
    return SourceError(message)


def _retry_after(exc: HttpResponseError) -> float | None:
    headers = getattr(exc.response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _body(event: EventData) -> bytes:
    message = event.raw_amqp_message
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(message.body)
    # Producers of other SDKs may send value or sequence bodies: keep their text so the
    # decoder quarantines (or accepts) it instead of the event vanishing.
    try:
        return event.body_as_str().encode()
    except TypeError:
        return repr(message.body).encode()


class _Partition:
    """Our PartitionContext for one owned partition, plus the source's delivery state."""

    def __init__(
        self,
        sdk: SdkPartitionContext,
        client: EventHubConsumerClient,
        store: BlobCheckpointStore,
    ) -> None:
        self._sdk = sdk
        self._client = client
        self._store = store
        self.initialized = False
        # Set when a failed batch was abandoned on stop: later batches must not be delivered,
        # their checkpoint would cover the abandoned one.
        self.abandoned = False
        # closing: the SDK is closing the partition (stop retrying); closed: our handler's
        # close ran, so nothing may checkpoint through this context any more.
        self.closing = False
        self.closed = False
        self.in_flight: asyncio.Future[None] | None = None
        self.last_sequence = -1
        # Received but not yet delivered: gathered into batches (see EventHubsSource).
        self.pending: list[ReceivedEvent] = []
        self.pending_since = 0.0
        self._times: dict[int, datetime] = {}

    @property
    def partition_id(self) -> str:
        return str(self._sdk.partition_id)

    async def attempt(self, work: Awaitable[None]) -> None:
        """Await one handler call; if cancelled meanwhile, let it finish first, then re-raise.

        The SDK cancels a partition's task on close and on ownership loss. A batch cut off
        half-way would leave detector state ahead of the checkpoint the close handler writes.
        """
        task = self.in_flight = asyncio.ensure_future(work)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                await asyncio.wait([task])
            if not task.cancelled() and task.exception() is not None:
                logger.warning(
                    "batch in flight failed while its partition closed",
                    exc_info=task.exception(),
                    extra={"partition": self.partition_id},
                )
            raise

    async def settled(self) -> None:
        """Wait until no handler call of this partition is running."""
        task = self.in_flight
        if task is not None and not task.done():
            await asyncio.wait([task])

    def add(self, events: list[ReceivedEvent]) -> None:
        if events and not self.pending:
            self.pending_since = time.monotonic()
        self.pending.extend(events)

    def ready(self, size: int, wait_s: float) -> list[list[ReceivedEvent]]:
        """Take the gathered events that make full batches, and the rest once it is old."""
        pending = self.pending
        if not pending:
            return []
        batches = [pending[i : i + size] for i in range(0, len(pending) - size + 1, size)]
        rest = pending[len(batches) * size :]
        if rest and time.monotonic() - self.pending_since >= wait_s:
            batches.append(rest)
            rest = []
        self.pending = rest
        return batches

    def received(self, events: list[EventData]) -> list[ReceivedEvent]:
        """Convert the SDK's events, dropping any this ownership has seen already: after a
        reconnect the SDK may hand over events that were still buffered once more."""
        partition = self.partition_id
        times = self._times
        if len(times) > 4096:
            times.clear()
        last = self.last_sequence
        out: list[ReceivedEvent] = []
        for event in events:
            annotations = event.raw_amqp_message.annotations or {}
            sequence = annotations.get(_SEQUENCE)
            if sequence is None:
                raise SourceError(f"an event of partition {partition} has no sequence number")
            if sequence <= last:
                continue
            last = sequence
            offset = annotations.get(_OFFSET)
            if isinstance(offset, bytes):
                offset = offset.decode()
            millis = annotations.get(_ENQUEUED) or 0
            # Events enqueued together share their time: convert each value once.
            when = times.get(millis)
            if when is None:
                when = times[millis] = datetime.fromtimestamp(millis / 1000, UTC)
            out.append(
                ReceivedEvent(
                    _body(event), partition, sequence, when, None if offset is None else str(offset)
                )
            )
        self.last_sequence = last
        return out

    async def checkpoint(self, event: ReceivedEvent) -> None:
        if self.closed:
            # A batch the SDK left running after closing the partition (it waits for a
            # failed receive's batch one second only): its owner may have moved on.
            raise SourceError(f"partition {self.partition_id} is closed: checkpoint not written")
        if event.offset is None:
            raise SourceError(
                f"cannot checkpoint partition {self.partition_id} at sequence {event.sequence}: "
                "the event has no offset"
            )
        sdk = self._sdk
        checkpoint = {
            "fully_qualified_namespace": sdk.fully_qualified_namespace,
            "eventhub_name": sdk.eventhub_name,
            "consumer_group": sdk.consumer_group,
            "partition_id": self.partition_id,
            "offset": event.offset,
            "sequence_number": event.sequence,
        }
        try:
            await self._store.update_checkpoint(checkpoint)
        except AzureError as exc:
            raise map_error(exc, "checkpoint update") from exc

    async def last_enqueued_sequence(self) -> int | None:
        try:
            properties = await self._client.get_partition_properties(self.partition_id)
        except asyncio.CancelledError:
            raise
        except (EventHubError, AzureError) as exc:
            # Lag is reporting only: an unreachable service must not stop processing.
            logger.debug("partition properties unavailable", extra={"error": str(exc)})
            return None
        return int(properties["last_enqueued_sequence_number"])

    async def checkpointed_sequence(self) -> int | None:
        sdk = self._sdk
        try:
            rows = await self._store.list_checkpoints(
                sdk.fully_qualified_namespace, sdk.eventhub_name, sdk.consumer_group
            )
        except AzureError as exc:
            raise map_error(exc, "checkpoint listing") from exc
        for row in rows:
            if row["partition_id"] == self.partition_id:
                return int(row["sequence_number"])
        return None


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
    ) -> None:
        _check_settings(settings, checkpoints=True)
        self.settings = settings
        self.processor = processor
        self.credential_factory = credential_factory or _default_credential
        # Extra EventHubConsumerClient keyword arguments (retry policy, transport, ...).
        self.client_options = dict(client_options or {})
        self._handler: BatchHandler | None = None
        self._stop = asyncio.Event()
        self._client: EventHubConsumerClient | None = None
        self._store: BlobCheckpointStore | None = None
        self._partitions: dict[str, _Partition] = {}
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
        try:
            store = self._checkpoint_store(credential)
            async with store:
                await self._ensure_container(credential)
                client = self._consumer_client(store, credential)
                self._client, self._store = client, store
                async with client:
                    await self._receive(client, stop)
        finally:
            self._handler, self._client, self._store = None, None, None
            self._partitions.clear()
            if credential is not None:
                await credential.close()

    async def _receive(self, client: EventHubConsumerClient, stop: asyncio.Event) -> None:
        receiving = asyncio.create_task(
            client.receive_batch(
                self._on_event_batch,
                max_batch_size=self.processor.batch_size,
                max_wait_time=self.processor.batch_wait_s,
                starting_position=_STARTING_POSITIONS[self.settings.starting_position],
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
        partition = _Partition(sdk, self._client, self._store)
        self._partitions[partition.partition_id] = partition
        failures = 0
        # The SDK would log a failed initialisation and deliver batches anyway: retry until it
        # works (or the partition is closed, which cancels this).
        while True:
            try:
                await self._handler.on_partition_initialize(partition)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = backoff(failures, exc)
                failures += 1
                logger.exception(
                    "partition initialisation failed; retrying",
                    extra={"partition": partition.partition_id, "retry_in_s": delay},
                )
                await asyncio.sleep(delay)
                continue
            partition.initialized = True
            return

    async def _on_event_batch(self, sdk: SdkPartitionContext, events: list[EventData]) -> None:
        partition = self._partitions.get(str(sdk.partition_id))
        if partition is None or not partition.initialized or partition.abandoned:
            return
        if events:
            partition.add(partition.received(events))
        # The SDK hands over whatever its buffer holds, often a single event when the
        # processor keeps up: batches are gathered here, up to batch_size or batch_wait_s.
        # An empty call (nothing arrived for max_wait_time) lets the last events go.
        for batch in partition.ready(self.processor.batch_size, self.processor.batch_wait_s):
            if not await self._deliver(partition, batch):
                return

    async def _deliver(self, partition: _Partition, batch: list[ReceivedEvent]) -> bool:
        """Run the handler on ``batch`` until it succeeds (True) or the partition is closing
        or the source stopping (False: the batch is abandoned, and so are later ones)."""
        handler = self._handler
        assert handler is not None
        delivered = await deliver(
            lambda: partition.attempt(handler.on_batch(partition, batch)),
            partition_id=partition.partition_id,
            first_sequence=batch[0].sequence,
            closing=lambda: partition.closing,
            stop=self._stop,
        )
        if not delivered:
            partition.abandoned = True
        return delivered

    async def _on_partition_close(self, sdk: SdkPartitionContext, reason: SdkCloseReason) -> None:
        partition = self._partitions.pop(str(sdk.partition_id), None)
        if partition is None:
            return
        partition.closing = True
        if not partition.initialized:
            partition.closed = True
            return
        # Never close a partition under a batch still running (see _Partition.checkpoint).
        await partition.settled()
        assert self._handler is not None
        try:
            await self._handler.on_partition_close(partition, _CLOSE_REASONS[reason])
        finally:
            partition.closed = True

    async def _on_error(self, sdk: SdkPartitionContext | None, error: Exception) -> None:
        # The SDK recovers by itself (reconnects, re-claims partitions from their checkpoint);
        # this is where its errors become visible.
        self.errors += 1
        logger.warning(
            "Event Hubs error",
            extra={
                "partition": None if sdk is None else sdk.partition_id,
                "error": f"{type(error).__name__}: {error}",
            },
        )

    def _checkpoint_store(self, credential: AsyncTokenCredential | None) -> BlobCheckpointStore:
        settings = self.settings
        if settings.checkpoint_connection_string is not None:
            return BlobCheckpointStore.from_connection_string(
                settings.checkpoint_connection_string.get_secret_value(),
                settings.checkpoint_container,
            )
        assert settings.checkpoint_account_url is not None
        return BlobCheckpointStore(
            settings.checkpoint_account_url, settings.checkpoint_container, credential=credential
        )

    async def _ensure_container(self, credential: AsyncTokenCredential | None) -> None:
        # With a missing container the checkpoint store fails its ownership claims quietly.
        settings = self.settings
        if settings.checkpoint_connection_string is not None:
            container = ContainerClient.from_connection_string(
                settings.checkpoint_connection_string.get_secret_value(),
                settings.checkpoint_container,
                api_version=CHECKPOINT_API_VERSION,
            )
        else:
            assert settings.checkpoint_account_url is not None
            container = ContainerClient(
                settings.checkpoint_account_url,
                settings.checkpoint_container,
                credential=credential,
                api_version=CHECKPOINT_API_VERSION,
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
                    raise map_error(exc, "checkpoint container creation") from exc
            except AzureError as exc:
                raise map_error(exc, "checkpoint container check") from exc

    def _consumer_client(
        self, store: BlobCheckpointStore, credential: AsyncTokenCredential | None
    ) -> EventHubConsumerClient:
        settings = self.settings
        options: dict[str, Any] = {
            "consumer_group": self.processor.consumer_group,
            "checkpoint_store": store,
            "load_balancing_interval": settings.load_balancing_interval_s,
            "partition_ownership_expiration_interval": settings.partition_ownership_expiration_s,
            **self.client_options,
        }
        if settings.connection_string is not None:
            return EventHubConsumerClient.from_connection_string(
                settings.connection_string.get_secret_value(),
                eventhub_name=settings.eventhub_name,
                **options,
            )
        assert settings.fully_qualified_namespace is not None and credential is not None
        return EventHubConsumerClient(
            fully_qualified_namespace=settings.fully_qualified_namespace,
            eventhub_name=settings.eventhub_name,
            credential=credential,
            **options,
        )


class EventHubsSink:
    """EventSink sending to an Event Hub: one batch (or several, when full) per partition key.

    Events with the same key (the app_id) land on one partition in order. Durable when
    ``append`` returns: the service accepted every batch.
    """

    def __init__(
        self,
        settings: EventHubsSettings,
        *,
        credential_factory: Callable[[], AsyncTokenCredential] | None = None,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        _check_settings(settings, checkpoints=False)
        self.settings = settings
        self.credential_factory = credential_factory or _default_credential
        self.client_options = dict(client_options or {})
        self._client: EventHubProducerClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> EventHubsSink:
        if self._state != "new":
            raise SourceError("an EventHubsSink can be opened once")
        settings = self.settings
        if settings.connection_string is not None:
            self._client = EventHubProducerClient.from_connection_string(
                settings.connection_string.get_secret_value(),
                eventhub_name=settings.eventhub_name,
                **self.client_options,
            )
        else:
            assert settings.fully_qualified_namespace is not None
            self._credential = self.credential_factory()
            self._client = EventHubProducerClient(
                fully_qualified_namespace=settings.fully_qualified_namespace,
                eventhub_name=settings.eventhub_name,
                credential=self._credential,
                **self.client_options,
            )
        self._state = "open"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._state = "closed"
        client, credential = self._client, self._credential
        self._client = self._credential = None
        try:
            if client is not None:
                await client.close()
        finally:
            if credential is not None:
                await credential.close()

    async def append(self, bodies: list[tuple[str | None, bytes]]) -> None:
        client = self._client
        if client is None:
            raise SourceError(f"EventHubsSink used outside 'async with' (state: {self._state})")
        groups: dict[str | None, list[bytes]] = {}
        for key, body in bodies:
            groups.setdefault(key, []).append(body)
        try:
            for key, group in groups.items():
                await self._send(client, key, group)
        except (EventHubError, AzureError) as exc:
            raise map_error(exc, "send") from exc

    async def _send(
        self, client: EventHubProducerClient, key: str | None, bodies: list[bytes]
    ) -> None:
        batch = await client.create_batch(partition_key=key)
        for body in bodies:
            try:
                batch.add(EventData(body))
                continue
            except ValueError:
                if len(batch) == 0:
                    raise SourceError(
                        f"an event of {len(body)} bytes exceeds the hub's maximum message size"
                    ) from None
            await client.send_batch(batch)
            batch = await client.create_batch(partition_key=key)
            try:
                batch.add(EventData(body))
            except ValueError:
                raise SourceError(
                    f"an event of {len(body)} bytes exceeds the hub's maximum message size"
                ) from None
        if len(batch):
            await client.send_batch(batch)


def _default_credential() -> AsyncTokenCredential:
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


def _check_settings(settings: EventHubsSettings, *, checkpoints: bool) -> None:
    if settings.connection_string is None and not settings.fully_qualified_namespace:
        raise SourceError(
            "azure.eventhubs needs connection_string or fully_qualified_namespace "
            "(DefaultAzureCredential)"
        )
    if settings.connection_string is not None:
        # The SDK lets eventhub_name override the connection string's EntityPath silently:
        # a mismatch would read the wrong hub.
        parts = dict(
            part.split("=", 1)
            for part in settings.connection_string.get_secret_value().split(";")
            if "=" in part
        )
        entity = parts.get("EntityPath")
        if entity and entity != settings.eventhub_name:
            raise SourceError(
                f"azure.eventhubs.eventhub_name is {settings.eventhub_name!r} but the connection "
                f"string names the hub {entity!r}: make them agree"
            )
    if (
        checkpoints
        and settings.checkpoint_connection_string is None
        and not settings.checkpoint_account_url
    ):
        raise SourceError(
            "azure.eventhubs needs checkpoint_connection_string or checkpoint_account_url "
            "(DefaultAzureCredential) for its Blob checkpoints"
        )


def eventhubs_source(settings: EventHubsSettings, processor: ProcessorSettings) -> EventHubsSource:
    return EventHubsSource(settings, processor)


def eventhubs_sink(settings: EventHubsSettings) -> EventHubsSink:
    return EventHubsSink(settings)
