"""Why an Event Hubs partition is no longer this processor's, as its batches in flight are told:
what happened (the SDK closed its receiver, and why), not a claim of another owner unless the
ownership blob names one. Over fakes of the SDK's partition context and checkpoint store."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from azure.eventhub import CloseReason as SdkCloseReason
from azure.eventhub.exceptions import ConnectError
from pydantic import SecretStr

from stream.config import ProcessorSettings
from stream.exceptions import PartitionLost
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.eventhubs_consumer import EventHubsSource
from stream.sources.eventhubs_partition import CheckpointStore, EventHubsPartition
from stream.sources.subprocess_source import _RemotePartition

SDK = SimpleNamespace(
    partition_id="1", fully_qualified_namespace="ns", eventhub_name="hub", consumer_group="$g"
)


class Ownerships:
    """The checkpoint store's ownership blob of partition 1 names ``owner``."""

    def __init__(self, owner: str) -> None:
        self.owner_id = "me"
        self._owner = owner

    async def owner(self, *args: str) -> str:
        return self._owner


def source_with(partition: EventHubsPartition) -> EventHubsSource:
    settings = EventHubsSettings(
        connection_string=SecretStr("Endpoint=sb://ns/;SharedAccessKeyName=a;SharedAccessKey=b"),
        eventhub_name="hub",
        checkpoint_connection_string=SecretStr("UseDevelopmentStorage=true"),
    )
    source = EventHubsSource(settings, ProcessorSettings())
    source._partitions[partition.partition_id] = partition
    return source


def partition(owner: str = "me") -> EventHubsPartition:
    store = cast(CheckpointStore, Ownerships(owner))
    return EventHubsPartition(cast(Any, SDK), cast(Any, None), store)


async def test_a_receive_failure_is_said_as_what_it_was() -> None:
    """A single processor whose connection dropped was told its partition was "owned by
    another processor now"."""
    lost = partition()
    source = source_with(lost)
    await source._on_error(cast(Any, SDK), ConnectError("Server unexpectedly closed connection"))
    await source._on_partition_close(cast(Any, SDK), SdkCloseReason.OWNERSHIP_LOST)

    with pytest.raises(PartitionLost) as raised:
        await lost.owned()
    assert str(raised.value) == (
        "the SDK closed partition 1's receiver: its receive failed (ConnectError: Server "
        "unexpectedly closed connection)"
    )


async def test_a_close_by_the_load_balancer_says_so() -> None:
    lost = partition()
    await source_with(lost)._on_partition_close(cast(Any, SDK), SdkCloseReason.OWNERSHIP_LOST)
    with pytest.raises(PartitionLost, match="load balancer no longer holds it for this processor"):
        await lost.owned()


async def test_another_owner_is_named_only_when_the_ownership_blob_names_it() -> None:
    assert await partition("me").owned() is True
    taken = partition("someone-else")
    with pytest.raises(PartitionLost) as raised:
        await taken.owned()
    assert str(raised.value) == (
        "partition 1 is owned by another processor now (its ownership names someone-else)"
    )


class Channel:
    """The receiver child's answer to the "owned" call."""

    def __init__(self, answer: bool | str) -> None:
        self.answer = answer

    async def call(self, name: str, *args: Any) -> bool | str:
        assert name == "owned"
        return self.answer


async def test_the_reason_crosses_from_the_receiver_child() -> None:
    remote = _RemotePartition("1", cast(Any, Channel("the SDK closed partition 1's receiver: x")))
    with pytest.raises(PartitionLost, match=r"^the SDK closed partition 1's receiver: x$"):
        await remote.owned()
    assert remote.closing
    assert await _RemotePartition("2", cast(Any, Channel(True))).owned() is True
