"""The receiver process's side of SubprocessSource: calls on partitions it no longer holds."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

import pytest

from stream.exceptions import SourceError
from stream.ports import CloseReason, PartitionContext, ReceivedEvent
from stream.sources.subprocess_channel import Channel
from stream.sources.subprocess_worker import _Forwarder


class Pipe:
    """Stands for the channel to the parent: answers every call at once."""

    async def call(self, *_: object) -> None:
        return None


class Context:
    partition_id = "3"

    async def owned(self) -> bool:
        return True


async def test_a_partition_closed_in_the_receiver_is_not_owned_and_refuses_a_checkpoint() -> None:
    forwarder = _Forwarder(cast(Channel, Pipe()), window=2)
    context = cast(PartitionContext, Context())
    await forwarder.on_partition_initialize(context)
    assert await forwarder._call_context("owned", "3") is True
    await forwarder.on_partition_close(context, CloseReason.OWNERSHIP_LOST)
    # The parent, finishing a batch of it, asks before it checkpoints: a plain no.
    assert await forwarder._call_context("owned", "3") is False
    event = ReceivedEvent(b"{}", "3", 7, datetime(2026, 12, 1, tzinfo=UTC), "7")
    with pytest.raises(SourceError, match="partition 3 is not owned by this receiver"):
        await forwarder._call_context("checkpoint", "3", event)
