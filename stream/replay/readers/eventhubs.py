"""Replaying Event Hubs: each partition read by enqueued time through the replay's own
consumer group, with no checkpoint store — the live processor's checkpoints and ownership
are never read or written; the replay's positions are its job's.

A partition's plan runs from the oldest retained event to the newest one when the job was
made; a new read starts at the window's first enqueued time (the service finds it), a
resumed one after the job's position.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import AzureError
from azure.eventhub import EventData
from azure.eventhub.aio import PartitionContext as SdkPartitionContext
from azure.eventhub.exceptions import EventHubError

from stream.exceptions import ReplayError
from stream.ports import ReceivedEvent
from stream.replay.ports import PartitionPlan, Window
from stream.sources.eventhubs_config import EventHubsSettings, check_settings
from stream.sources.eventhubs_consumer import consumer_client
from stream.sources.eventhubs_partition import received_event
from stream.sources.eventhubs_sdk import default_credential, map_error

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

logger = logging.getLogger(__name__)

SOURCE_NAME = "eventhubs"
# How long a partition may deliver nothing before the reader takes the events it still
# expected as gone (retention removed them since the plan was made).
QUIET_S = 5.0


class EventHubsReader:
    source = SOURCE_NAME
    preceded_in_store = True
    unit = "events"
    detects_by_partition = True
    enqueued_times = True

    def __init__(
        self,
        settings: EventHubsSettings,
        consumer_group: str,
        start: datetime,
        *,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        check_settings(settings, checkpoints=False)
        self.settings = settings
        self.consumer_group = consumer_group
        self.start = start
        self.client_options = dict(client_options or {})
        self._credential: AsyncTokenCredential | None = None
        self.unreadable: dict[str, str] = {}

    async def __aenter__(self) -> EventHubsReader:
        if self.settings.connection_string is None:
            self._credential = default_credential()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._credential is not None:
            await self._credential.close()

    def _client(self) -> Any:
        return consumer_client(
            self.settings, self.consumer_group, self._credential, **self.client_options
        )

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        plans = []
        try:
            async with self._client() as client:
                for partition in await client.get_partition_ids():
                    props = await client.get_partition_properties(partition)
                    if props["is_empty"]:
                        continue
                    plans.append(
                        PartitionPlan(
                            partition,
                            props["beginning_sequence_number"] - 1,
                            props["last_enqueued_sequence_number"],
                        )
                    )
        except (AzureError, EventHubError) as exc:
            raise map_error(exc, "reading the partitions to replay") from exc
        return plans

    async def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        if after >= plan.last:
            return
        queue: asyncio.Queue[list[EventData] | BaseException] = asyncio.Queue(maxsize=2)

        async def on_batch(_: SdkPartitionContext, events: list[EventData]) -> None:
            await queue.put(events)

        async def on_error(_: SdkPartitionContext | None, error: Exception) -> None:
            await queue.put(error)

        start: Any = self.start if after == plan.after else after
        client = self._client()
        receiving = asyncio.create_task(
            client.receive_batch(
                on_batch,
                partition_id=plan.partition,
                starting_position=start,
                starting_position_inclusive=after == plan.after,
                max_batch_size=batch_size,
                max_wait_time=1.0,
                on_error=on_error,
            )
        )
        quiet = 0.0
        try:
            while after < plan.last:
                got = await queue.get()
                if isinstance(got, BaseException):
                    raise ReplayError(
                        f"Event Hubs partition {plan.partition}: {type(got).__name__}: {got}"
                    ) from got
                if not got:
                    quiet += 1.0
                    if quiet >= QUIET_S:
                        logger.warning(
                            "partition %s ended at sequence %d before the planned %d "
                            "(retention removed the rest)",
                            plan.partition,
                            after,
                            plan.last,
                        )
                        return
                    continue
                quiet = 0.0
                events = [
                    event
                    for event in (received_event(e, plan.partition) for e in got)
                    if after < event.sequence <= plan.last
                ]
                if events:
                    after = events[-1].sequence
                    yield events
        finally:
            await client.close()
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

    async def preceding(
        self, plan: PartitionPlan, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        # Not read: a hub partition cannot be read newest first (preceded_in_store).
        return
        yield
