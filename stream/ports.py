"""The event source port: where raw telemetry is read from, partition by partition.

A source drives the processing (like Event Hubs' EventProcessor): it calls a BatchHandler for
each partition it owns, and the handler checkpoints through the PartitionContext once its
effects are durable. Implementations: stream.sources.local_log (SQLite, embedded) and the
Event Hubs adapter (stream.sources.eventhubs_consumer). Also here: what the pipeline needs of
the hot path, which the composition root hands in. Breaches leave the pipeline through
``alerts.ports.AlertPublisher``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import NamedTuple, Protocol

from schemas import Breach, DerivedSizes, Status, TelemetryEvent, ValidationIssue


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input that is not a valid event (stream.decode decides them); ``raw`` is the part
    that was rejected. ``record_id``: the id of its quarantine record when HTTP ingest refused
    it (made of the request and the index there: stream.enrich.request_record_id), else None."""

    index: int
    raw: bytes
    issues: tuple[ValidationIssue, ...]
    app_id: str | None = None
    record_id: str | None = None


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """One message as the source delivered it: raw bytes plus its position."""

    body: bytes
    partition: str
    sequence: int
    enqueued_time: datetime
    offset: str | None = None
    # From the embedded log, for the canonical JSON of an event evalstream validated, kept
    # without its user_id: (user_hash, document id) as enrichment would have made them from
    # the raw event (user_hash "" without a user_id); or SCRUBBED for a rejected body kept
    # with each user_id value replaced by its hash already.
    user: tuple[str, str] | None = None


# ReceivedEvent without the frozen dataclass __init__ (one object.__setattr__ per field, 0.75 µs
# an event): sources make one per event. The slots' own setters fill the instance instead.
_new_received = object.__new__
_set_body, _set_partition, _set_sequence, _set_enqueued, _set_offset, _set_user = (
    ReceivedEvent.__dict__[name].__set__
    for name in ("body", "partition", "sequence", "enqueued_time", "offset", "user")
)


def received(
    body: bytes,
    partition: str,
    sequence: int,
    enqueued_time: datetime,
    offset: str | None = None,
    user: tuple[str, str] | None = None,
) -> ReceivedEvent:
    """``ReceivedEvent(...)``, at a third of the cost."""
    event: ReceivedEvent = _new_received(ReceivedEvent)
    _set_body(event, body)
    _set_partition(event, partition)
    _set_sequence(event, sequence)
    _set_enqueued(event, enqueued_time)
    _set_offset(event, offset)
    _set_user(event, user)
    return event


# ``ReceivedEvent.user`` of a rejected body whose user_id values are keyed hashes already:
# its quarantine record keeps it as it is (hashing them again would hide which user it was).
# Records of older versions: the processor decides such a body again.
SCRUBBED: tuple[str, str] = ("", "")
# The first of ``ReceivedEvent.user`` for a rejected input logged with the decision made of it
# as sent (stream.privacy): the second is that decision (stream.decode.refusal_text). Its body
# is scrubbed like SCRUBBED's; deciding the scrubbed bytes again could accept them (a user_id
# of 42 becomes a hash, a string) or read other reasons. Never a user hash (hex digits).
REFUSED = "!"


def scrubbed_already(user: tuple[str, str] | None) -> bool:
    """Whether a body with this ``ReceivedEvent.user`` had its user ids hashed when logged."""
    return user is not None and (user == SCRUBBED or user[0] == REFUSED)


class CloseReason(StrEnum):
    SHUTDOWN = "shutdown"
    OWNERSHIP_LOST = "ownership_lost"


class Selection(Protocol):
    """Which decoded inputs a pipeline keeps (a replay's range; a live pipeline keeps all):
    accepted events whose event time is in [``start``, ``end``) and, when ``apps`` is given,
    of one of them; rejected inputs (no event time to go by) as ``keeps_rejected`` says."""

    start: datetime
    end: datetime
    apps: frozenset[str] | None

    def keeps_rejected(self, app_id: str | None, enqueued: datetime) -> bool: ...


class PartitionContext(Protocol):
    @property
    def partition_id(self) -> str: ...

    @property
    def rewindable(self) -> bool:
        """Whether ``resume_after`` can move this partition's position (the embedded log);
        the processor checks positions on start only then."""
        ...

    async def checkpoint(self, event: ReceivedEvent) -> None:
        """Record that every event up to and including ``event`` is fully processed. Never
        moves a stored checkpoint backwards; raises PartitionLost once another processor owns
        the partition."""
        ...

    async def owned(self) -> bool:
        """Whether this processor still owns the partition, or PartitionLost saying why not
        (from a source that knows). Asked before the snapshot is saved: an owner that lost the
        partition (its batch finished late) must write neither snapshot nor checkpoint over
        the new owner's."""
        ...

    async def last_enqueued_sequence(self) -> int | None:
        """The newest sequence number in the partition, for lag reporting (None = unknown)."""
        ...

    async def checkpointed_sequence(self) -> int | None:
        """The sequence of the last checkpoint (None = no checkpoint yet)."""
        ...

    async def resume_after(self, sequence: int) -> bool:
        """Deliver from the event after ``sequence`` on, and number new events after it: the
        processor found the store behind the checkpoint (lost writes), or the source behind
        the store (lost events). False: this source cannot, the caller says what is at risk."""
        ...


class BatchHandler(Protocol):
    async def on_partition_initialize(self, context: PartitionContext) -> None:
        """Runs before the first batch of a partition this instance now owns."""
        ...

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        """Process one batch. If it raises, the batch is not checkpointed and is delivered again."""
        ...

    async def on_idle(self, context: PartitionContext) -> None:
        """Runs each time the source finds no new event in the partition (sources that can tell):
        the end of a burst is checkpointed without waiting for a next event. A failure is the
        handler's to log, not to raise: the source calls it again at its next idle turn."""
        ...

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        """Runs when the partition is released: on shutdown (after the last batch) or when
        another instance took it over (its writes may race: everything must be idempotent)."""
        ...


class EventSource(Protocol):
    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        """Deliver batches to ``handler`` until ``stop`` is set; then finish the batches in
        flight, close each partition with CloseReason.SHUTDOWN and return."""
        ...


class Backlog(NamedTuple):
    """Where a consumer group stands on the embedded log: events waiting for it, and events it
    has done (stored, per its progress or checkpoints), summed over the partitions."""

    waiting: int
    done: int


class EventSink(Protocol):
    """The producer side: append raw event bodies to the source (send, simulate, ingest)."""

    @property
    def logs_refusals(self) -> bool:
        """Whether ``append`` takes ``refused``: the embedded log keeps a rejected input with
        the decision made of it, and the processor quarantines it as it reads it, so a store
        that lost its last commits gets the record back by reading the log again, like the
        events. False (Event Hubs: a message carries no decision): whoever refused the
        inputs keeps them in quarantine itself."""
        ...

    async def __aenter__(self) -> EventSink: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def append(
        self,
        bodies: list[tuple[str | None, bytes]],
        validated: Sequence[tuple[TelemetryEvent, str]] | None = None,
        refused: Sequence[Rejected] = (),
    ) -> None:
        """Append (partition key, body) pairs; durable when it returns. ``validated``: the
        events the bodies were made from and their document ids, one per body (ingest has
        them), so a sink that rewrites bodies (the log's pseudonymiser) need not read them
        again. ``refused``: inputs rejected already, appended with their decision in the same
        transaction (only where ``logs_refusals``; else ValueError)."""
        ...


class Observed(Protocol):
    """What the hot path reads of a stored event: a TelemetryDocument, or the compact form a
    replay keeps of one for shadow detection (stream.replay.observed)."""

    @property
    def id(self) -> str: ...
    @property
    def app_id(self) -> str: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def status(self) -> Status: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def tokens(self) -> object | None: ...
    @property
    def scores(self) -> Mapping[str, float]: ...
    @property
    def derived(self) -> DerivedSizes: ...


class HotPathState(Protocol):
    """What the pipeline needs of the hot path of one partition (stream.hotpath.HotPath)."""

    def observe(self, doc: Observed) -> list[Breach]:
        """Feed one stored document to the detectors; return the breaches it opened or
        resolved. Deterministic: the same documents in the same order give the same breaches."""
        ...

    def snapshot(self) -> bytes:
        """The detectors' state, to restore after a restart (stored with the checkpoint)."""
        ...


# Builds a partition's hot path: from its last snapshot, or fresh (None).
HotPathFactory = Callable[[bytes | None], HotPathState]
