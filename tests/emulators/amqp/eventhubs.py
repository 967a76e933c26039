"""Event Hubs entities for the AMQP test broker: hubs, partitions, consumer groups, epochs.

Install with `EventHubs.install(broker)`; the admin methods (`create_hub`, `events`, ...) are
then reachable on the broker itself and are safe to call from any thread.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from proton import Data, Described, symbol, timestamp

from . import codec
from .broker import Broker
from .entity import (
    EntityHandler,
    IncomingDelivery,
    LinkRefused,
    ManagementReply,
    ManagementRequest,
)
from .links import Link
from .message import annotations_of, batch_parts, with_annotations, with_delivery_annotations

logger = logging.getLogger(__name__)

DEFAULT_CONSUMER_GROUP = "$Default"
SELECTOR_FILTER = "apache.org:selector-filter:string"
EPOCH = "com.microsoft:epoch"
LINK_STOLEN = "amqp:link:stolen"
# A receiver desiring this capability gets the partition's last-enqueued event with every event.
RUNTIME_METRIC = "com.microsoft:enable-receiver-runtime-metric"
# Real Event Hubs allows at most 5 non-epoch receivers per consumer group and partition.
MAX_NON_EPOCH_RECEIVERS = 5

_SELECTOR = re.compile(
    r"amqp\.annotation\.(x-opt-offset|x-opt-sequence-number|x-opt-enqueued-time)\s*(>=|>)\s*'([^']*)'"
)


@dataclass(frozen=True)
class StoredEvent:
    sequence_number: int
    offset: int
    enqueued_time_ms: int
    partition_key: str | None
    message: bytes  # as the producer sent it
    delivered: bytes  # with the broker's annotations, as consumers receive it


@dataclass
class StartPosition:
    field: str  # "offset" | "sequence" | "enqueued"
    value: str
    inclusive: bool


@dataclass
class Partition:
    hub: str
    partition_id: str
    events: list[StoredEvent] = field(default_factory=list)
    next_sequence: int = 0
    next_offset: int = 0
    last_enqueued_ms: int = 0
    receivers: dict[str, list[Link]] = field(default_factory=dict)  # by consumer group (lower)


@dataclass
class Hub:
    name: str
    partitions: list[Partition]
    consumer_groups: set[str]
    created_at_ms: int
    max_events: int | None = None
    max_age_seconds: float | None = None


def parse_selector(selector: str) -> StartPosition:
    match = _SELECTOR.search(selector)
    if match is None:
        raise LinkRefused("amqp:invalid-field", f"unsupported selector {selector!r}")
    name, operator, value = match.groups()
    kind = {
        "x-opt-offset": "offset",
        "x-opt-sequence-number": "sequence",
        "x-opt-enqueued-time": "enqueued",
    }[name]
    return StartPosition(kind, value, operator == ">=")


def partition_for_key(key: str, count: int) -> int:
    """Stable partition choice for a partition key (same key → same partition, every run)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


class EventHubs(EntityHandler):
    """The Event Hubs model and its AMQP handler (see module docstring)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.hubs: dict[str, Hub] = {}
        self._round_robin = itertools.count()

    @classmethod
    def install(cls, broker: Broker) -> EventHubs:
        model = cls(broker)
        broker.register("$management", model)
        broker.add_extension("eventhubs", model)
        return model

    # -- admin API (any thread) -----------------------------------------------------------
    def create_hub(
        self,
        name: str,
        partitions: int = 2,
        consumer_groups: tuple[str, ...] = (),
        *,
        max_events: int | None = None,
        max_age_seconds: float | None = None,
    ) -> None:
        """Create (or replace) a hub with partitions "0".."n-1" and the given consumer groups
        (`$Default` always exists). Retention keeps at most max_events per partition and drops
        events older than max_age_seconds."""

        def create() -> None:
            groups = {DEFAULT_CONSUMER_GROUP.lower(), *(g.lower() for g in consumer_groups)}
            hub = Hub(
                name,
                [Partition(name, str(i)) for i in range(partitions)],
                groups,
                int(time.time() * 1000),
                max_events,
                max_age_seconds,
            )
            old = self.hubs.get(name.lower())
            if old is not None:
                self._detach_all(old, "amqp:not-found", "hub was recreated")
            self.hubs[name.lower()] = hub
            self.broker.register(name, self)

        self.broker.call(create)

    def delete_hub(self, name: str) -> None:
        def delete() -> None:
            hub = self.hubs.pop(name.lower(), None)
            if hub is not None:
                self._detach_all(hub, "amqp:not-found", "hub was deleted")
                self.broker.unregister(name)

        self.broker.call(delete)

    def add_consumer_group(self, hub: str, group: str) -> None:
        self.broker.call(lambda: self._hub(hub).consumer_groups.add(group.lower()))

    def set_retention(
        self, hub: str, *, max_events: int | None = None, max_age_seconds: float | None = None
    ) -> None:
        def apply() -> None:
            h = self._hub(hub)
            h.max_events, h.max_age_seconds = max_events, max_age_seconds
            for p in h.partitions:
                self._trim(h, p)

        self.broker.call(apply)

    def events(self, hub: str, partition: str) -> list[StoredEvent]:
        """The retained events of one partition, oldest first."""

        def read() -> list[StoredEvent]:
            h = self._hub(hub)
            p = h.partitions[int(partition)]
            self._trim(h, p)
            return list(p.events)

        return self.broker.call(read)

    def receivers(
        self, hub: str, partition: str, consumer_group: str = DEFAULT_CONSUMER_GROUP
    ) -> list[dict[str, Any]]:
        """Attached receiver links of a partition: name and epoch (None = no epoch)."""

        def read() -> list[dict[str, Any]]:
            p = self._hub(hub).partitions[int(partition)]
            return [
                {"name": lk.name, "epoch": lk.state.get("epoch")}
                for lk in p.receivers.get(consumer_group.lower(), [])
            ]

        return self.broker.call(read)

    def append(
        self, hub: str, partition: str, message: bytes, partition_key: str | None = None
    ) -> StoredEvent:
        """Append an encoded message directly (bypassing AMQP), e.g. to seed a partition."""

        def run() -> StoredEvent:
            h = self._hub(hub)
            return self._append(h, h.partitions[int(partition)], message, partition_key)

        return self.broker.call(run)

    # -- internals ----------------------------------------------------------------------
    def _hub(self, name: str) -> Hub:
        try:
            return self.hubs[name.lower()]
        except KeyError:
            raise KeyError(f"no event hub named {name!r}") from None

    def _detach_all(self, hub: Hub, condition: str, description: str) -> None:
        for p in hub.partitions:
            for links in p.receivers.values():
                for link in list(links):
                    link.detach(condition, description)

    def _trim(self, hub: Hub, partition: Partition) -> None:
        events = partition.events
        drop = 0
        if hub.max_events is not None and len(events) > hub.max_events:
            drop = len(events) - hub.max_events
        if hub.max_age_seconds is not None:
            cutoff = int((time.time() - hub.max_age_seconds) * 1000)
            while drop < len(events) and events[drop].enqueued_time_ms < cutoff:
                drop += 1
        if drop:
            del events[:drop]

    def _append(
        self,
        hub: Hub,
        partition: Partition,
        message: bytes,
        partition_key: str | None,
        enqueued_ms: int | None = None,
    ) -> StoredEvent:
        # Enqueued times never go backwards within a partition, even if the clock does.
        now = max(enqueued_ms or int(time.time() * 1000), partition.last_enqueued_ms)
        annotations: dict[Any, Any] = {
            symbol("x-opt-sequence-number"): partition.next_sequence,
            symbol("x-opt-offset"): str(partition.next_offset),
            symbol("x-opt-enqueued-time"): timestamp(now),
        }
        if partition_key is not None:
            annotations[symbol("x-opt-partition-key")] = partition_key
        event = StoredEvent(
            partition.next_sequence,
            partition.next_offset,
            now,
            partition_key,
            message,
            with_annotations(message, annotations),
        )
        partition.events.append(event)
        partition.next_sequence += 1
        # Offsets grow by the stored size, like the service's byte offsets: they are not
        # sequence numbers, so code that confuses the two fails here too.
        partition.next_offset += len(message)
        partition.last_enqueued_ms = now
        self._trim(hub, partition)
        for links in partition.receivers.values():
            for link in list(links):
                self._pump(link)
        return event

    # -- producers ------------------------------------------------------------------------
    async def on_attach(self, link: Link) -> None:
        parts = link.path.split("/")
        hub = self.hubs.get(parts[0].lower())
        if hub is None:
            raise LinkRefused("amqp:not-found", f"event hub {parts[0]!r} does not exist")
        if link.role == "receiver":
            self._attach_producer(hub, link, parts)
        else:
            self._attach_consumer(hub, link, parts)

    def _attach_producer(self, hub: Hub, link: Link, parts: list[str]) -> None:
        if len(parts) == 1:
            link.state["partition"] = None
        elif len(parts) == 3 and parts[1].lower() == "partitions":
            link.state["partition"] = self._partition(hub, parts[2])
        else:
            raise LinkRefused("amqp:not-found", f"unknown event hub target {link.path!r}")

    def _partition(self, hub: Hub, partition_id: str) -> Partition:
        for p in hub.partitions:
            if p.partition_id == partition_id:
                return p
        raise LinkRefused(
            "amqp:not-found", f"partition {partition_id!r} of {hub.name!r} does not exist"
        )

    async def on_transfer(self, link: Link, delivery: IncomingDelivery) -> Described | None:
        hub = self.hubs.get(link.path.split("/")[0].lower())
        if hub is None:
            return codec.rejected("amqp:not-found", "event hub was deleted")
        if delivery.message_format == codec.BATCH_MESSAGE_FORMAT:
            messages = batch_parts(delivery.payload)
            envelope_key = annotations_of(delivery.payload).get("x-opt-partition-key")
        else:
            messages = [delivery.payload]
            envelope_key = None
        if not messages:
            return codec.accepted()
        key = envelope_key
        if key is None:
            key = annotations_of(messages[0]).get("x-opt-partition-key")
        partition: Partition | None = link.state["partition"]
        if partition is None:
            if key is not None:
                partition = hub.partitions[partition_for_key(str(key), len(hub.partitions))]
            else:
                partition = hub.partitions[next(self._round_robin) % len(hub.partitions)]
        # A batch is enqueued at one instant: every event in it gets the same enqueued time.
        enqueued_ms = int(time.time() * 1000)
        for message in messages:
            self._append(hub, partition, message, None if key is None else str(key), enqueued_ms)
        return codec.accepted()

    # -- consumers ------------------------------------------------------------------------
    def _attach_consumer(self, hub: Hub, link: Link, parts: list[str]) -> None:
        if (
            len(parts) != 5
            or parts[1].lower() != "consumergroups"
            or parts[3].lower() != "partitions"
        ):
            raise LinkRefused("amqp:not-found", f"unknown event hub source {link.path!r}")
        group = parts[2].lower()
        if group not in hub.consumer_groups:
            raise LinkRefused("amqp:not-found", f"consumer group {parts[2]!r} does not exist")
        partition = self._partition(hub, parts[4])
        position = self._start_position(link)
        epoch = link.properties.get(EPOCH)
        epoch = int(epoch) if epoch is not None else None
        current = partition.receivers.setdefault(group, [])
        epochs = [lk.state["epoch"] for lk in current if lk.state.get("epoch") is not None]
        highest = max(epochs) if epochs else None
        if epoch is None:
            if highest is not None:
                raise LinkRefused(
                    LINK_STOLEN,
                    f"an epoch receiver (epoch {highest}) owns partition {partition.partition_id}",
                )
            if len(current) >= MAX_NON_EPOCH_RECEIVERS:
                raise LinkRefused(
                    "amqp:resource-limit-exceeded",
                    "at most 5 receivers per partition and consumer group",
                )
        else:
            if highest is not None and epoch < highest:
                raise LinkRefused(
                    LINK_STOLEN, f"epoch {epoch} is lower than the current epoch {highest}"
                )
            for old in list(current):
                old.detach(
                    LINK_STOLEN,
                    f"a receiver with epoch {epoch} took partition {partition.partition_id}",
                )
        link.state.update(
            hub=hub,
            partition=partition,
            group=group,
            epoch=epoch,
            next_sequence=self._resolve_start(hub, partition, position),
        )
        current.append(link)

    def _start_position(self, link: Link) -> StartPosition:
        for key, value in link.filters.items():
            if key == SELECTOR_FILTER or (
                isinstance(value, Described) and str(value.descriptor) == SELECTOR_FILTER
            ):
                text = value.value if isinstance(value, Described) else value
                return parse_selector(str(text))
        return StartPosition("offset", "@latest", False)

    def _resolve_start(self, hub: Hub, partition: Partition, position: StartPosition) -> int:
        """The first sequence number the new receiver gets."""
        self._trim(hub, partition)
        if position.field == "offset" and position.value == "-1":
            return (
                partition.events[0].sequence_number if partition.events else partition.next_sequence
            )
        if position.field == "offset" and position.value == "@latest":
            return partition.next_sequence
        try:
            target = int(position.value)
        except ValueError:
            raise LinkRefused(
                "amqp:invalid-field", f"bad start position {position.value!r}"
            ) from None

        def key(event: StoredEvent) -> int:
            if position.field == "offset":
                return event.offset
            if position.field == "sequence":
                return event.sequence_number
            return event.enqueued_time_ms

        for event in partition.events:
            k = key(event)
            if k > target or (position.inclusive and k == target):
                return event.sequence_number
        return partition.next_sequence

    def on_flow(self, link: Link) -> None:
        self._pump(link)

    def _pump(self, link: Link) -> None:
        partition: Partition | None = link.state.get("partition")
        if partition is None or link.role != "sender" or link.detached:
            return
        hub: Hub = link.state["hub"]
        self._trim(hub, partition)
        events = partition.events
        while link.credit > 0 and events:
            first = events[0].sequence_number
            index = max(0, link.state["next_sequence"] - first)
            if index >= len(events):
                return
            event = events[index]
            payload = event.delivered
            if RUNTIME_METRIC in link.desired_capabilities:
                last = events[-1]
                payload = with_delivery_annotations(
                    payload,
                    {
                        symbol("last_enqueued_sequence_number"): last.sequence_number,
                        symbol("last_enqueued_offset"): str(last.offset),
                        symbol("last_enqueued_time_utc"): timestamp(last.enqueued_time_ms),
                        symbol("runtime_info_retrieval_time_utc"): timestamp(
                            int(time.time() * 1000)
                        ),
                    },
                )
            link.send(payload)
            link.state["next_sequence"] = event.sequence_number + 1

    def on_detach(self, link: Link, error: Any) -> None:
        partition: Partition | None = link.state.get("partition")
        if partition is None or link.role != "sender":
            return
        links = partition.receivers.get(link.state["group"], [])
        if link in links:
            links.remove(link)

    # -- management -----------------------------------------------------------------------
    async def on_management(self, request: ManagementRequest) -> ManagementReply:
        if request.operation != "READ":
            return ManagementReply(400, description=f"unsupported operation {request.operation!r}")
        kind = str(request.properties.get("type", ""))
        name = str(request.properties.get("name", ""))
        hub = self.hubs.get(name.lower())
        if hub is None:
            return ManagementReply(404, description=f"event hub {name!r} does not exist")
        if kind == "com.microsoft:eventhub":
            return ManagementReply(
                200,
                body={
                    "name": hub.name,
                    "type": "com.microsoft:eventhub",
                    "created_at": timestamp(hub.created_at_ms),
                    "partition_count": len(hub.partitions),
                    "partition_ids": codec.undescribed_array(
                        Data.STRING, *[p.partition_id for p in hub.partitions]
                    ),
                },
            )
        if kind == "com.microsoft:partition":
            partition_id = str(request.properties.get("partition", ""))
            try:
                partition = self._partition(hub, partition_id)
            except LinkRefused as exc:
                return ManagementReply(404, description=exc.description)
            self._trim(hub, partition)
            events = partition.events
            last = events[-1] if events else None
            return ManagementReply(
                200,
                body={
                    "name": hub.name,
                    "type": "com.microsoft:partition",
                    "partition": partition.partition_id,
                    "begin_sequence_number": events[0].sequence_number
                    if events
                    else partition.next_sequence,
                    "last_enqueued_sequence_number": last.sequence_number if last else -1,
                    "last_enqueued_offset": str(last.offset) if last else "-1",
                    "last_enqueued_time_utc": timestamp(last.enqueued_time_ms if last else 0),
                    "is_partition_empty": not events,
                },
            )
        return ManagementReply(400, description=f"unsupported type {kind!r}")
