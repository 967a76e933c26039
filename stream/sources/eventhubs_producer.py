"""The Event Hubs sink: sends event bodies to a hub, one batch (or several) per partition key."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from azure.core.exceptions import AzureError
from azure.eventhub import EventData
from azure.eventhub.aio import EventHubProducerClient
from azure.eventhub.exceptions import EventHubError

from schemas import TelemetryEvent
from stream.exceptions import SourceError, SourceMisconfigured
from stream.sources.eventhubs_config import EventHubsSettings, check_settings
from stream.sources.eventhubs_sdk import default_credential, map_error

if TYPE_CHECKING:
    from azure.core.credentials_async import AsyncTokenCredential

    from stream.ports import Rejected

# How long opening a sink waits for the hub's answer to "do you exist".
HUB_CHECK_S = 5.0


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
        check_settings(settings, checkpoints=False)
        self.settings = settings
        self.credential_factory = credential_factory or default_credential
        self.client_options = dict(client_options or {})
        self._client: EventHubProducerClient | None = None
        self._credential: AsyncTokenCredential | None = None
        self._state: Literal["new", "open", "closed"] = "new"

    async def __aenter__(self) -> EventHubsSink:
        if self._state != "new":
            raise SourceError("an EventHubsSink can be opened once")
        if self.settings.connection_string is None:
            self._credential = self.credential_factory()
        self._client = self._producer(**self.client_options)
        self._state = "open"
        try:
            await self._refuse_a_missing_hub()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    def _producer(self, **options: Any) -> EventHubProducerClient:
        settings = self.settings
        if settings.connection_string is not None:
            return EventHubProducerClient.from_connection_string(
                settings.connection_string.get_secret_value(),
                eventhub_name=settings.eventhub_name,
                **options,
            )
        assert settings.fully_qualified_namespace is not None and self._credential is not None
        return EventHubProducerClient(
            fully_qualified_namespace=settings.fully_qualified_namespace,
            eventhub_name=settings.eventhub_name,
            credential=self._credential,
            **options,
        )

    async def _refuse_a_missing_hub(self) -> None:
        """A hub that does not exist fails the open at once: the SDK retries each send to it
        for seconds as it would an unreachable service. One try, bounded; any other failure
        of it is left to the sends and their retries."""
        checker = self._producer(**{**self.client_options, "retry_total": 0})
        try:
            async with checker:
                await asyncio.wait_for(checker.get_partition_ids(), HUB_CHECK_S)
        except (EventHubError, AzureError) as exc:
            error = map_error(exc, "open", self.settings)
            if isinstance(error, SourceMisconfigured):
                raise error from exc
        except TimeoutError:
            pass

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

    # An Event Hubs message carries no decision, and the store it feeds (Cosmos DB) keeps what
    # it acknowledged: ingest keeps the inputs it refuses in quarantine itself.
    logs_refusals = False

    async def append(
        self,
        bodies: list[tuple[str | None, bytes]],
        validated: Sequence[tuple[TelemetryEvent, str]] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> None:
        if refused:
            raise ValueError("an EventHubsSink logs no refusals (logs_refusals)")
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
            raise map_error(exc, "send", self.settings) from exc

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


def eventhubs_sink(settings: EventHubsSettings) -> EventHubsSink:
    return EventHubsSink(settings)
