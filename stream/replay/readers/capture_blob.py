"""Replaying Event Hubs Capture archives: Avro files in Blob storage, as Capture writes them.

Capture names a file ``<namespace>/<hub>/<partition>/<yyyy>/<MM>/<dd>/<HH>/<mm>/<ss>.avro`` by
the start of its window and writes records of the schema ``SequenceNumber``, ``Offset``,
``EnqueuedTimeUtc``, ``SystemProperties``, ``Properties``, ``Body``: the partition, sequence
numbers and enqueued times of the live hub, so replayed documents and quarantine records land
on the ids the live processor gave them. A file that cannot be read (damaged, not Avro) is
reported — its readable records are replayed, the rest of the range too.
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

import fastavro
from azure.core.exceptions import AzureError
from azure.storage.blob.aio import ContainerClient

from stream.exceptions import ReplayError, ReplayMisconfigured
from stream.ports import ReceivedEvent
from stream.replay.config import CaptureSettings
from stream.replay.ports import PartitionPlan, Window, earlier
from stream.sources.eventhubs_sdk import default_credential, map_error

logger = logging.getLogger(__name__)

SOURCE_NAME = "eventhubs"
# Capture closes a file after at most 15 minutes: a file named earlier than this before the
# window can still hold its first events.
MAX_CAPTURE_WINDOW = timedelta(minutes=15)

# What Capture writes (the Avro schema of its files).
CAPTURE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "EventData",
    "namespace": "Microsoft.ServiceBus.Messaging",
    "fields": [
        {"name": "SequenceNumber", "type": "long"},
        {"name": "Offset", "type": "string"},
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {
            "name": "SystemProperties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes"]},
        },
        {
            "name": "Properties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes", "null"]},
        },
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}


def enqueued_time(record: dict[str, Any]) -> datetime:
    """The record's enqueued time: ``x-opt-enqueued-time`` (milliseconds) when the system
    properties carry it, else ``EnqueuedTimeUtc`` (``12/4/2026 5:20:55 AM`` or ISO 8601)."""
    millis = (record.get("SystemProperties") or {}).get("x-opt-enqueued-time")
    if isinstance(millis, int):
        return datetime.fromtimestamp(millis / 1000, UTC)
    text = str(record["EnqueuedTimeUtc"])
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = datetime.strptime(text, "%m/%d/%Y %I:%M:%S %p")
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def file_time(name: str) -> datetime | None:
    """The window start a Capture file is named by (None: not a Capture file name)."""
    parts = name.removesuffix(".avro").split("/")[-6:]
    try:
        year, month, day, hour, minute, second = (int(part) for part in parts)
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


class CaptureReader:
    source = SOURCE_NAME
    preceded_in_store = True
    unit = "events"
    # The live partitions (the Capture files of one are read in order, as one stream).
    detects_by_partition = True
    enqueued_times = True

    def __init__(
        self,
        settings: CaptureSettings,
        start: datetime,
        end: datetime | None,
    ) -> None:
        if settings.connection_string is None and not settings.account_url:
            raise ReplayMisconfigured(
                "replay.capture: set connection_string or account_url (and container, prefix) "
                "to replay Capture archives"
            )
        self.settings = settings
        self.start = start
        self.end = end
        self.unreadable: dict[str, str] = {}
        self._container: ContainerClient | None = None
        self._credential: Any = None

    async def __aenter__(self) -> CaptureReader:
        settings = self.settings
        if settings.connection_string is not None:
            self._container = ContainerClient.from_connection_string(
                settings.connection_string.get_secret_value(), settings.container
            )
        else:
            assert settings.account_url is not None
            self._credential = default_credential()
            self._container = ContainerClient(
                settings.account_url, settings.container, credential=self._credential
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._container is not None:
            await self._container.close()
        if self._credential is not None:
            await self._credential.close()

    @property
    def container(self) -> ContainerClient:
        if self._container is None:
            raise ReplayError("CaptureReader used outside 'async with'")
        return self._container

    def _prefix(self) -> str:
        prefix = self.settings.prefix.strip("/")
        return f"{prefix}/" if prefix else ""

    async def _files(self) -> dict[str, list[str]]:
        """The archive's files that can hold events of the range, per partition, in order."""
        prefix = self._prefix()
        earliest = earlier(self.start, MAX_CAPTURE_WINDOW)
        files: dict[str, list[str]] = {}
        try:
            async for blob in self.container.list_blobs(name_starts_with=prefix):
                name = blob.name
                when = file_time(name)
                if when is None or not name.endswith(".avro"):
                    continue
                if when < earliest or (self.end is not None and when >= self.end):
                    continue
                files.setdefault(name[len(prefix) :].split("/")[0], []).append(name)
        except AzureError as exc:
            raise map_error(exc, f"listing Capture files under {prefix or '/'}") from exc
        return {partition: sorted(names) for partition, names in sorted(files.items())}

    async def _records(self, name: str) -> AsyncIterator[dict[str, Any]]:
        try:
            data = await (await self.container.download_blob(name)).readall()
        except AzureError as exc:
            raise map_error(exc, f"reading Capture file {name}") from exc
        records = 0
        try:
            for record in fastavro.reader(io.BytesIO(data)):
                records += 1
                yield record  # type: ignore[misc]
        except Exception as exc:  # fastavro raises ValueError, EOFError, KeyError, ...
            error = f"{type(exc).__name__}: {exc} (after {records} records)"
            logger.warning("Capture file %s is unreadable: %s", name, error)
            self.unreadable[name] = error

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        plans = []
        for partition, names in (await self._files()).items():
            first: int | None = None
            last: int | None = None
            for name in names:
                async for record in self._records(name):
                    sequence = int(record["SequenceNumber"])
                    first = sequence if first is None else min(first, sequence)
                    last = sequence if last is None else max(last, sequence)
            if first is not None and last is not None:
                plans.append(PartitionPlan(partition, first - 1, last))
        return plans

    async def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        batch: list[ReceivedEvent] = []
        for name in (await self._files()).get(plan.partition, []):
            async for record in self._records(name):
                sequence = int(record["SequenceNumber"])
                if not after < sequence <= plan.last:
                    continue
                body = record.get("Body") or b""
                batch.append(
                    ReceivedEvent(
                        body, plan.partition, sequence, enqueued_time(record), record["Offset"]
                    )
                )
                after = sequence
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
        if batch:
            yield batch

    async def preceding(
        self, plan: PartitionPlan, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        # Not read, as from the hub itself (preceded_in_store).
        return
        yield
