"""The store port: where telemetry, quarantine and processor state are kept.

Every write is an upsert by deterministic id, so writing the same batch twice (after a crash,
on replay) changes nothing. A write method returns only once its data is durable: the processor
checkpoints after it, never before.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Protocol, runtime_checkable

from schemas import (
    Breach,
    EvaluationResult,
    JobManifest,
    QuarantineRecord,
    ShardProgress,
    TelemetryDocument,
)


def window_days(start: datetime, end: datetime) -> list[date]:
    """The UTC days that [start, end) touches: a document's pk is its app and the UTC day of its
    timestamp (stream.enrich.partition_key), so a window reads one pk per app and day, and the
    days concatenated in order are in time order."""
    first = start.astimezone(UTC).date()
    last = (end - timedelta(microseconds=1)).astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


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


@dataclass(frozen=True, slots=True)
class EventMark:
    """Where a stored event sits in its source partition and its two times: what moved the
    partition's watermark when the processor read it (stream.pipeline)."""

    sequence: int
    timestamp: datetime
    enqueued_time: datetime


@runtime_checkable
class MarkedStore(Protocol):
    """A store that finds its documents by source position (Cosmos DB: the query engine
    filters and orders on any field; the embedded store keeps ``ingest`` inside the blob)."""

    async def marks_before(
        self, source: str, partition: str, sequence: int, limit: int
    ) -> list[EventMark]:
        """The documents of ``source``'s ``partition`` at or before ``sequence``, highest
        sequence first: whole sequences (a message's events) of at most ``limit`` documents
        in all, or one sequence's however many; none when nothing is stored there."""
        ...


class ProcessorStore(Protocol):
    """What the processing pipeline writes: documents, quarantine records and its snapshots.
    A replay hands the pipeline its own (stream.replay.job_store), which keeps snapshots in
    the replay job instead of the store."""

    async def write(
        self, documents: Sequence[TelemetryDocument], quarantined: Sequence[QuarantineRecord]
    ) -> list[TelemetryDocument]:
        """Upsert documents and quarantine records; durable when it returns.

        A document replaces the stored one of its id only if both hold the same event (the
        fields the producer sent; ingest, app and derived fields may differ, and so may the
        values of the user pseudonyms, ``user_hash`` and ``metadata.user_id``: made with a key,
        they change with it, and an older version stored metadata.user_id raw; whether the
        event has them may not). The documents whose id is held by a different event are not
        written and are returned: the caller quarantines them (``duplicate_event_id_conflict``)."""
        ...

    async def load_state(self, consumer_group: str, partition: str) -> StateSnapshot | None: ...

    async def save_state(self, snapshot: StateSnapshot, *, replace: bool = False) -> None:
        """Store the partition's snapshot, unless the stored one covers a later position
        (then nothing changes): a snapshot never moves backwards, unless ``replace`` (the
        partition's numbers started again: the processor sets its snapshot back)."""
        ...


@dataclass(frozen=True)
class KeptBreach:
    """A breach the processor published, as its journal keeps it: its number among the
    partition's breaches (0, 1, 2, ...) and the sequence of the event that raised it."""

    number: int
    sequence: int
    breach: Breach


@runtime_checkable
class BreachJournal(Protocol):
    """Where the processor keeps every breach before publishing it, so that a topic that lost
    its last commits (alerts.ports.NumberingPublisher) is given them again, with the same
    ids. The embedded store has it; on Azure, Service Bus keeps what it acknowledged."""

    async def keep_breaches(
        self, consumer_group: str, partition: str, breaches: Sequence[KeptBreach]
    ) -> None:
        """Upsert by (consumer group, partition, number); durable when it returns."""
        ...

    async def kept_breaches(
        self, consumer_group: str, partition: str, first: int, last: int
    ) -> list[KeptBreach]:
        """The kept breaches numbered ``first`` to ``last`` (both included), by number."""
        ...


class TelemetryStore(ProcessorStore, Protocol):
    async def __aenter__(self) -> TelemetryStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

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


class EvaluationStore(Protocol):
    """Where the cold path keeps results, shard progress and job manifests.

    Results are upserts by their deterministic id, so a retried shard never makes a second
    result. Progress is written only after a unit's results and breaches are durable; it saves
    work, the results are the truth. Every write is durable when it returns.
    """

    async def __aenter__(self) -> EvaluationStore: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def upsert_results(self, results: Sequence[EvaluationResult]) -> None: ...

    async def results(
        self,
        app_id: str | None = None,
        policy: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[EvaluationResult]:
        """Stored results, newest window first (``since``: windows starting at or after)."""
        ...

    async def done_units(self, manifest_id: str) -> set[str]:
        """Keys (``Unit.key``) of the manifest's units marked done."""
        ...

    async def mark_done(self, progress: ShardProgress) -> None: ...

    async def stage_manifest(self, manifest: JobManifest) -> None:
        """Keep the manifest under its id; staging the same manifest again changes nothing."""
        ...

    async def load_manifest(self, manifest_id: str) -> JobManifest | None: ...

    async def app_ids(self, start: datetime, end: datetime) -> list[str]:
        """Apps with telemetry timestamped in ``[start, end)`` (planning, not window reads)."""
        ...
