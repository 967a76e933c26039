"""The store port: where telemetry, quarantine and processor state are kept.

Every write is an upsert by deterministic id, so writing the same batch twice (after a crash,
on replay) changes nothing. A write method returns only once its data is durable: the processor
checkpoints after it, never before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Protocol

from schemas import QuarantineRecord, TelemetryDocument


@dataclass(frozen=True)
class StateSnapshot:
    """Processor state of one partition and the source position it covers.

    On resume, events at or before ``covered_sequence`` are stored again (idempotently) but not
    fed to detectors, so detector state is neither double counted nor forgotten.
    """

    consumer_group: str
    partition: str
    covered_sequence: int
    blob: bytes


class TelemetryStore(Protocol):
    async def __aenter__(self) -> TelemetryStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> None:
        """Upsert documents and quarantine records; durable when it returns."""
        ...

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None: ...

    async def save_state(self, snapshot: StateSnapshot) -> None: ...

    async def get_telemetry(self, document_id: str, pk: str) -> TelemetryDocument | None: ...

    async def count(self, kind: str) -> int:
        """Number of stored records of a kind: ``telemetry`` or ``quarantine``."""
        ...

    def telemetry_window(
        self, app_ids: Sequence[str], start: datetime, end: datetime, page_size: int = 1000
    ) -> AsyncIterator[list[TelemetryDocument]]:
        """Documents of these apps with start ≤ timestamp < end, page by page, in time order."""
        ...

    def quarantine_records(self, limit: int = 100) -> AsyncIterator[QuarantineRecord]: ...
