"""One owned Event Hubs partition: the PartitionContext the handler checkpoints through (into
Blob storage), and the source's delivery state for it (events gathered into batches, the batch
in flight, duplicates after a reconnect dropped); and the Blob checkpoint store it uses (where
claimed partitions start: ``eventhubs_start``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Container, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    AzureError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubConsumerClient
from azure.eventhub.amqp import AmqpMessageBodyType
from azure.eventhub.exceptions import EventHubError
from azure.eventhub.extensions.checkpointstoreblobaio import BlobCheckpointStore

from common.amqp import body_bytes
from stream.exceptions import PartitionLost, SourceError
from stream.ports import ReceivedEvent, received
from stream.sources.eventhubs_sdk import map_error
from stream.sources.eventhubs_start import (
    START_CHECKPOINT,
    PartitionEnd,
    StartingPositions,
    claimed_to_start,
    partition_end,
)

if TYPE_CHECKING:
    from azure.eventhub.aio import PartitionContext as SdkPartitionContext

logger = logging.getLogger(__name__)

_SEQUENCE = b"x-opt-sequence-number"
_OFFSET = b"x-opt-offset"
_ENQUEUED = b"x-opt-enqueued-time"


def _body(event: EventData) -> bytes:
    message = event.raw_amqp_message
    if message.body_type == AmqpMessageBodyType.DATA:
        return b"".join(message.body)
    # Producers of other SDKs may send value or sequence bodies: keep their content so the
    # decoder quarantines (or accepts) it instead of the event vanishing.
    return body_bytes(message.body_type, message.body)


def received_event(
    event: EventData, partition: str, times: dict[int, datetime] | None = None
) -> ReceivedEvent:
    """Our ReceivedEvent of an SDK event; ``times`` caches converted enqueued times (events
    enqueued together share theirs)."""
    annotations = event.raw_amqp_message.annotations or {}
    sequence = annotations.get(_SEQUENCE)
    if sequence is None:
        raise SourceError(f"an event of partition {partition} has no sequence number")
    offset = annotations.get(_OFFSET)
    if isinstance(offset, bytes):
        offset = offset.decode()
    millis = annotations.get(_ENQUEUED) or 0
    when = times.get(millis) if times is not None else None
    if when is None:
        when = datetime.fromtimestamp(millis / 1000, UTC)
        if times is not None:
            times[millis] = when
    return received(
        _body(event), partition, sequence, when, None if offset is None else str(offset)
    )


def _stored_sequence(metadata: dict[str, str] | None) -> int | None:
    """The sequence number a checkpoint blob's metadata holds (None: none, or unreadable)."""
    try:
        return int((metadata or {})["sequencenumber"])
    except (KeyError, ValueError):
        return None


class CheckpointStore(BlobCheckpointStore):
    """The SDK's Blob checkpoint store, with four changes.

    A checkpoint blob it cannot read (metadata missing or not numbers: another tool, a partial
    restore) does not stop every partition. The SDK lists all checkpoints whenever it starts
    partitions, and one unreadable blob made that listing fail at every load-balancing round:
    no partition started, for ever. Such a checkpoint reads as the partition's start, logged as
    an error naming the blob: the events are read again, which stores nothing twice (writes are
    idempotent, and what the store's snapshot covers is skipped), where starting at the latest
    event would lose some.

    A checkpoint never moves backwards: ``update_checkpoint`` writes on the condition that the
    blob is still the one it read (its etag, or its absence), and not over a later position.
    An owner whose batch finished after another processor took the partition over would
    otherwise replace the new owner's checkpoint with an older one.

    It remembers the owner id the load balancer claims with and the partitions it claimed, so
    a partition can tell whether the ownership blob still names this processor (``owner``), and
    the claimed partitions it is about to start (not ``running``) start where they must: their
    checkpoint checked against the partition's end, or without one where their snapshot ends
    (``starting_positions``, settled whenever the SDK lists checkpoints).

    It does not claim a partition whose close is still running in this processor (``closing``,
    kept by the source). The SDK cancels a partition it lost again at each round while the
    close runs, which ends the partition's task early; claimed back then (its new owner gone),
    the partition would start while the close still runs, and the close would end what the
    start set up (both name the same partition).
    """

    owner_id: str | None = None
    claimed: frozenset[str] = frozenset()
    starting_positions: StartingPositions | None = None
    closing: Container[str] = frozenset()
    running: Container[str] = frozenset()

    async def claim_ownership(
        self, ownership_list: Iterable[dict[str, Any]], **kwargs: Any
    ) -> Iterable[dict[str, Any]]:
        ownerships = list(ownership_list)
        for ownership in ownerships:
            # A release claims with an empty owner id.
            if ownership.get("owner_id"):
                self.owner_id = str(ownership["owner_id"])
        ownerships = [
            ownership
            for ownership in ownerships
            if not (ownership.get("owner_id") and str(ownership["partition_id"]) in self.closing)
        ]
        claimed = list(await super().claim_ownership(ownerships, **kwargs))
        if self.owner_id is not None:
            self.claimed = frozenset(
                str(ownership["partition_id"])
                for ownership in claimed
                if ownership.get("owner_id") == self.owner_id
            )
        return claimed

    async def owner(
        self,
        fully_qualified_namespace: str,
        eventhub_name: str,
        consumer_group: str,
        partition: str,
    ) -> str | None:
        """The owner id the partition's ownership blob names now (None: no such blob)."""
        name = f"{fully_qualified_namespace}/{eventhub_name}/{consumer_group}/ownership/{partition}"
        blob = self._container_client.get_blob_client(name.lower())
        try:
            properties = await blob.get_blob_properties()
        except ResourceNotFoundError:
            return None
        return str((properties.metadata or {}).get("ownerid", ""))

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        blob = self._container_client.get_blob_client(_checkpoint_blob(checkpoint))
        sequence = int(checkpoint["sequence_number"])
        metadata = {"offset": str(checkpoint["offset"]), "sequencenumber": str(sequence)}
        while True:
            try:
                properties = await blob.get_blob_properties()
            except ResourceNotFoundError as exc:
                if getattr(exc, "error_code", None) == "ContainerNotFound":
                    raise
                try:
                    # Without overwrite, the upload fails if the blob exists by now.
                    await blob.upload_blob(b"", metadata=metadata)
                except ResourceExistsError:
                    continue
                return
            stored = _stored_sequence(properties.metadata)
            if stored is not None and stored > sequence:
                logger.warning(
                    "checkpoint not moved back: the stored one is at a later position",
                    extra={
                        "partition": checkpoint["partition_id"],
                        "sequence": sequence,
                        "stored_sequence": stored,
                    },
                )
                return
            try:
                await blob.set_blob_metadata(metadata, if_match=properties.etag)
            except ResourceModifiedError:
                continue
            return

    async def reset_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write ``checkpoint`` whatever the blob holds (it may move it backwards): for a
        partition whose numbering started again (see StartingPositions)."""
        blob = self._container_client.get_blob_client(_checkpoint_blob(checkpoint))
        metadata = {
            "offset": str(checkpoint["offset"]),
            "sequencenumber": str(checkpoint["sequence_number"]),
        }
        await blob.upload_blob(b"", metadata=metadata, overwrite=True)

    async def list_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        # The SDK lists them to start the partitions it claimed: they are checked first.
        checkpoints = await self.read_checkpoints(
            fully_qualified_namespace, eventhub_name, consumer_group, **kwargs
        )
        if self.starting_positions is None:
            return checkpoints
        where = {
            "fully_qualified_namespace": fully_qualified_namespace,
            "eventhub_name": eventhub_name,
            "consumer_group": consumer_group,
        }
        return await self.starting_positions.settle(
            checkpoints, claimed_to_start(self.claimed, self.running), self, where
        )

    async def read_checkpoints(
        self, fully_qualified_namespace: str, eventhub_name: str, consumer_group: str, **kwargs: Any
    ) -> list[dict[str, Any]]:
        """The stored checkpoints, an unreadable one as the partition's start."""
        prefix = f"{fully_qualified_namespace}/{eventhub_name}/{consumer_group}/checkpoint/"
        blobs = self._container_client.list_blobs(
            name_starts_with=prefix.lower(), include=["metadata"], **kwargs
        )
        checkpoints: list[dict[str, Any]] = []
        async for blob in blobs:
            metadata = blob.metadata or {}
            position: dict[str, Any]
            try:
                offset = str(metadata["offset"])
                position = {"offset": offset, "sequence_number": int(metadata["sequencenumber"])}
                if not offset:
                    raise ValueError("empty offset")
            except (KeyError, ValueError):
                logger.error(
                    "checkpoint unreadable: its partition is read again from its start",
                    extra={"blob": blob.name, "metadata": dict(metadata)},
                )
                position = dict(START_CHECKPOINT)
            checkpoints.append(
                {
                    "fully_qualified_namespace": fully_qualified_namespace,
                    "eventhub_name": eventhub_name,
                    "consumer_group": consumer_group,
                    "partition_id": blob.name.split("/")[-1],
                    **position,
                }
            )
        return checkpoints


def _checkpoint_blob(checkpoint: dict[str, Any]) -> str:
    name = "{}/{}/{}/checkpoint/{}".format(
        checkpoint["fully_qualified_namespace"],
        checkpoint["eventhub_name"],
        checkpoint["consumer_group"],
        checkpoint["partition_id"],
    )
    return name.lower()


class EventHubsPartition:
    """Our PartitionContext for one owned partition, plus the source's delivery state."""

    def __init__(
        self,
        sdk: SdkPartitionContext,
        client: EventHubConsumerClient,
        store: CheckpointStore,
        ensure_container: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._sdk = sdk
        self._client = client
        self._store = store
        self._ensure_container = ensure_container
        self.initialized = False
        # Set when a failed batch was abandoned on stop: later batches must not be delivered,
        # their checkpoint would cover the abandoned one.
        self.abandoned = False
        # closing: the SDK is closing the partition (stop retrying); closed: our handler's
        # close ran, so nothing may checkpoint through this context any more.
        self.closing = False
        self.closed = False
        # Why this processor no longer holds the partition (the SDK closed its receiver, or
        # the ownership blob names another owner): nothing may be written for it any more.
        self.lost_reason: str | None = None
        # The SDK's last receive error for this partition (it closes the partition then).
        self.receive_error: str | None = None
        self.in_flight: asyncio.Future[None] | None = None
        self.last_sequence = -1
        # Received but not yet delivered: gathered into batches (see EventHubsSource).
        self.pending: list[ReceivedEvent] = []
        self.pending_since = 0.0
        self._times: dict[int, datetime] = {}

    @property
    def partition_id(self) -> str:
        return str(self._sdk.partition_id)

    @property
    def lost(self) -> bool:
        return self.lost_reason is not None

    def lose(self, reason: str) -> None:
        """This processor no longer holds the partition, for ``reason`` (the first one given
        is what happened; later ones follow from it)."""
        if self.lost_reason is None:
            self.lost_reason = reason

    def let_go_by_sdk(self) -> None:
        """The SDK closed (or cancelled) the partition's receiver while the source runs."""
        why = (
            f"its receive failed ({self.receive_error})"
            if self.receive_error is not None
            else "its load balancer no longer holds it for this processor"
        )
        self.lose(f"the SDK closed partition {self.partition_id}'s receiver: {why}")

    async def attempt(
        self, work: Awaitable[None], *, stopping: Callable[[], bool] | None = None
    ) -> None:
        """Await one handler call; if cancelled meanwhile, let it finish first, then re-raise.

        The SDK cancels a partition's task on close and on ownership loss. A batch cut off
        half-way would leave detector state ahead of the checkpoint the close handler writes.
        Cancelled while the source is not ``stopping``, the partition is lost (its load
        balancer saw another owner, or its receive failed and it is released): the batch
        finishes without writing its snapshot or checkpoint over the next owner's.
        """
        task = self.in_flight = asyncio.ensure_future(work)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if stopping is not None and not stopping():
                self.let_go_by_sdk()
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
            received = received_event(event, partition, times)
            if received.sequence <= last:
                continue
            last = received.sequence
            out.append(received)
        self.last_sequence = last
        return out

    async def owned(self) -> bool:
        """True, or PartitionLost saying why this processor no longer holds the partition."""
        if self.lost_reason is not None:
            raise PartitionLost(self.lost_reason)
        sdk = self._sdk
        try:
            owner = await self._store.owner(
                sdk.fully_qualified_namespace,
                sdk.eventhub_name,
                sdk.consumer_group,
                self.partition_id,
            )
        except AzureError as exc:
            raise map_error(exc, "ownership check") from exc
        # No ownership blob (its container deleted and not made again yet): nobody else has
        # claimed the partition, and the checkpoint makes the container again.
        if owner is None or owner == self._store.owner_id:
            return True
        self.lose(
            f"partition {self.partition_id} is owned by another processor now (its ownership "
            f"names {owner})"
        )
        logger.warning(
            "partition taken over by another processor",
            extra={"partition": self.partition_id, "owner": owner},
        )
        raise PartitionLost(self.lost_reason or "")

    async def checkpoint(self, event: ReceivedEvent) -> None:
        if self.lost_reason is not None:
            raise PartitionLost(
                f"{self.lost_reason}: checkpoint at sequence {event.sequence} not written"
            )
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
            try:
                await self._store.update_checkpoint(checkpoint)
            except ResourceNotFoundError as exc:
                # The Storage SDK sets error_code on the errors it raises.
                code = getattr(exc, "error_code", None)
                if code != "ContainerNotFound" or self._ensure_container is None:
                    raise
                # Deleted while running: every checkpoint would fail, and the batch with it,
                # for ever. Made again as at start (ownerships are claimed again in it).
                logger.error(
                    "checkpoint container not found: creating it again",
                    extra={"partition": self.partition_id},
                )
                await self._ensure_container()
                await self._store.update_checkpoint(checkpoint)
        except AzureError as exc:
            raise map_error(exc, "checkpoint update") from exc

    async def last_enqueued_sequence(self) -> int | None:
        try:
            end = await read_end(self._client, self.partition_id)
        except asyncio.CancelledError:
            raise
        except (EventHubError, AzureError) as exc:
            # Lag is reporting only: an unreachable service must not stop processing.
            logger.debug("partition properties unavailable", extra={"error": str(exc)})
            return None
        return end.last_sequence

    # Event Hubs numbers events itself and the SDK chose the starting position already; its
    # writes and Cosmos DB's are acknowledged durable, so there is no lost tail to look for.
    rewindable = False

    async def resume_after(self, sequence: int) -> bool:
        return False

    async def checkpointed_sequence(self) -> int | None:
        sdk = self._sdk
        try:
            rows = await self._store.read_checkpoints(
                sdk.fully_qualified_namespace, sdk.eventhub_name, sdk.consumer_group
            )
        except AzureError as exc:
            raise map_error(exc, "checkpoint listing") from exc
        for row in rows:
            if row["partition_id"] == self.partition_id:
                sequence = int(row["sequence_number"])
                # At the partition's start (reset, or unreadable): no event checkpointed.
                return sequence if sequence >= 0 else None
        return None


async def read_end(client: EventHubConsumerClient, partition: str) -> PartitionEnd:
    """The partition's end, from the service (raises the SDK's errors)."""
    return partition_end(await client.get_partition_properties(partition))
