"""The per-partition pipeline: decode → validate → enrich → store → detect → publish → checkpoint.

The order is the processing promise: a checkpoint never runs ahead of a durable write, breaches
are published (durably, idempotently) before the snapshot that covers them, and detector
snapshots record the position they cover so a restart neither double counts nor forgets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import orjson

from alerts.ports import AlertPublisher, NumberingPublisher, PublishedPosition
from common.errors import EvalstreamError, Misconfigured, is_retryable
from common.log_context import log_context
from common.repeated import RepeatedFailure
from schemas import Breach, QuarantineRecord, TelemetryDocument, TelemetryEvent, ValidationIssue
from store.ports import BreachJournal, KeptBreach, ProcessorStore, StateSnapshot
from stream.decode import Decoder, refusal
from stream.enrich import INGEST_SOURCE, Enricher
from stream.exceptions import PartitionLost
from stream.ports import (
    REFUSED,
    SCRUBBED,
    CloseReason,
    HotPathFactory,
    HotPathState,
    PartitionContext,
    ReceivedEvent,
    Rejected,
    Selection,
)
from stream.pseudonyms import scrub_user_ids_in_text
from stream.stats import ProcessorStats

logger = logging.getLogger(__name__)


class ScrubbedError(Exception):
    """An exception as logged: its type's name and its message, user ids hashed."""


SNAPSHOT_VERSION = 1


class _Nothing:
    """The selection that keeps no input (Pipeline.watermark_after)."""

    start = end = datetime.min.replace(tzinfo=UTC)
    apps: frozenset[str] | None = frozenset()

    def keeps_rejected(self, app_id: str | None, enqueued: datetime) -> bool:
        return False


_NOTHING = _Nothing()


@dataclass
class _Partition:
    covered: int = -1
    # Highest sequence fed to detectors; above ``covered`` until the next snapshot.
    observed: int = -1
    # Breaches detected but not yet durably published (kept across a failed batch's retry),
    # and the sequence of the event that raised each.
    outbox: list[Breach] = field(default_factory=list)
    outbox_at: list[int] = field(default_factory=list)
    # Breaches of this partition numbered so far, the outbox's the last of them: the snapshot
    # keeps the count of those published, which the bus must hold (``_check_bus_holds``).
    numbered: int = 0
    watermark: datetime | None = None
    hot: HotPathState | None = None
    pending: ReceivedEvent | None = None
    last_checkpoint: float = field(default_factory=time.monotonic)


def is_transient(exc: BaseException) -> bool:
    """A failure the same batch may not meet again: the store said so (unavailable,
    throttled), or the connection to it broke."""
    return is_retryable(exc) or isinstance(exc, ConnectionError | TimeoutError)


def is_not_the_events(exc: BaseException) -> bool:
    """A failure no event causes, so splitting the batch cannot find a culprit: a transient
    one, or a store set up wrongly (a container removed, credentials revoked) — split, every
    event would end in quarantine."""
    return is_transient(exc) or isinstance(exc, Misconfigured)


def _encode_snapshot(partition: _Partition) -> bytes:
    header = {
        "version": SNAPSHOT_VERSION,
        "watermark": partition.watermark.isoformat() if partition.watermark else None,
        "hot": partition.hot is not None,
        # Every breach numbered below this is published: a snapshot waits for its batch's.
        "breaches": partition.numbered - len(partition.outbox),
    }
    hot = partition.hot.snapshot() if partition.hot is not None else b""
    return orjson.dumps(header) + b"\n" + hot


def _decode_snapshot(blob: bytes) -> tuple[datetime | None, bytes | None, int]:
    """The watermark, the hot path's snapshot and the count of breaches published (0 in
    snapshots of versions that did not number them: their partitions number from there)."""
    header_bytes, _, hot = blob.partition(b"\n")
    header = orjson.loads(header_bytes)
    if header.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"unsupported processor snapshot version {header.get('version')!r}")
    watermark = datetime.fromisoformat(header["watermark"]) if header["watermark"] else None
    return watermark, (hot if header["hot"] else None), int(header.get("breaches", 0))


def _ranges(numbers: Sequence[int]) -> str:
    """Sorted numbers as ranges: ``3..7, 9``."""
    parts: list[str] = []
    start = previous = numbers[0]
    for number in [*numbers[1:], None]:
        if number is not None and number == previous + 1:
            previous = number
            continue
        parts.append(str(start) if start == previous else f"{start}..{previous}")
        if number is not None:
            start = previous = number
    return ", ".join(parts)


class Pipeline:
    """BatchHandler that every source drives; one _Partition of state per owned partition."""

    def __init__(
        self,
        *,
        store: ProcessorStore,
        decoder: Decoder,
        enricher: Enricher,
        consumer_group: str,
        lateness: timedelta,
        checkpoint_interval_s: float,
        stats: ProcessorStats,
        hot_path: HotPathFactory | None = None,
        publisher: AlertPublisher | None = None,
        selection: Selection | None = None,
    ) -> None:
        if hot_path is not None and publisher is None:
            raise ValueError("a hot path needs a publisher for its breaches")
        self.store = store
        self.decoder = decoder
        self.enricher = enricher
        self.consumer_group = consumer_group
        self.lateness = lateness
        self.checkpoint_interval_s = checkpoint_interval_s
        self.stats = stats
        self.hot_path = hot_path
        self.publisher = publisher
        self.selection = selection
        # A bus that can lose its last commits (the embedded SQLite topic) records what it holds
        # of each partition, and the store's journal keeps what was published: together they
        # let a start find and give again what the bus lost (``_check_bus_holds``).
        self._numbering = publisher if isinstance(publisher, NumberingPublisher) else None
        self._journal = (
            store if self._numbering is not None and isinstance(store, BreachJournal) else None
        )
        self._partitions: dict[str, _Partition] = {}
        # Tried at each idle turn (every batch_wait_s): a full disk is said once, not each time.
        self._idle_failures = RepeatedFailure("idle checkpoints", logger)
        # The failure no retry mends that ends processing (see ``_give_up``); ``failed`` is set
        # with it, for whoever runs the source to stop it.
        self.failure: Misconfigured | None = None
        self.failed = asyncio.Event()

    def _give_up(self, exc: Misconfigured) -> None:
        """The store (or bus) is set up wrongly: a container deleted while running, credentials
        revoked. Unlike an outage it does not pass by itself, so retrying each batch for ever
        would only repeat the error while the processor looked alive. The processor then
        stops (``failed``) without checkpointing any batch not written, and raises the error
        (``Processor.run``): the one line that says it (the command's, exit 2), so the
        orchestrator shows it and restarts the process once the setup is right again (the
        store creates missing containers at start). Here it is only noted that stopping
        began, not said a second time."""
        if self.failure is not None:
            return
        self.failure = exc
        logger.info(
            "processing stops: the store or alert bus is set up wrongly (%s); the partitions "
            "close, then the run ends with it",
            type(exc).__name__,
        )
        self.failed.set()

    @contextlib.asynccontextmanager
    async def stopping_on_failure(self, stop: asyncio.Event) -> AsyncIterator[None]:
        """While inside, ``stop`` is set once the pipeline gives up (``failure``): for whoever
        runs the source, which then stops retrying and closes its partitions."""

        async def stop_when_failed() -> None:
            await self.failed.wait()
            stop.set()

        stopper = asyncio.create_task(stop_when_failed())
        try:
            yield
        finally:
            stopper.cancel()

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        try:
            await self._initialize(context)
        except Misconfigured as exc:
            self._give_up(exc)
            raise

    async def _initialize(self, context: PartitionContext) -> None:
        partition_id = context.partition_id
        snapshot = await self.store.load_state(self.consumer_group, partition_id)
        state = _Partition()
        hot_blob: bytes | None = None
        if snapshot is not None:
            state.covered = snapshot.covered_sequence
            state.watermark, hot_blob, state.numbered = _decode_snapshot(snapshot.blob)
        state.observed = state.covered
        if self.hot_path is not None:
            state.hot = self.hot_path(hot_blob)
        self._partitions[partition_id] = state
        if context.rewindable:
            await self._check_positions(context, state.covered)
        elif snapshot is not None:
            await self._check_snapshot_within(context, state)
        elif state.hot is not None:
            await self._check_snapshot_kept(context)
        await self._check_bus_holds(partition_id, state)
        # Without a checkpoint (lost, or not yet written after the snapshot) the source resumes
        # after the snapshot: the lag counts from there.
        await self.stats.attach(context, covered=state.covered)
        logger.info(
            "partition initialised",
            extra={"partition": partition_id, "covered_sequence": state.covered},
        )

    async def _check_snapshot_kept(self, context: PartitionContext) -> None:
        """A source that cannot rewind (Event Hubs) resumes from its checkpoint whatever the
        store holds, and every checkpoint follows a saved snapshot: a checkpoint without one
        means the snapshots were lost (the state container emptied, or deleted and created
        again). The detectors can only start afresh from there; that is said loudly, not
        passed off as a first start."""
        try:
            checkpointed = await context.checkpointed_sequence()
        except Exception as exc:
            # A check, not processing: an unreachable checkpoint store must not stop the start.
            logger.warning("snapshot not checked against the checkpoint: %s", exc)
            return
        if checkpointed is not None:
            logger.error(
                "no detector snapshot although the source checkpoint is at sequence %d: the "
                "store lost its snapshots (state container emptied or created again?); the "
                "detectors start afresh from there",
                checkpointed,
                extra={"partition": context.partition_id},
            )

    async def _check_snapshot_within(self, context: PartitionContext, state: _Partition) -> None:
        """A source that cannot rewind (Event Hubs) never numbers an event again, so a snapshot
        covering a sequence past the partition's last event is of an earlier partition of the
        same name: the event hub was deleted and created again, and its numbers start again
        (the source reads it from its start, and says so). Its events would all be taken for
        ones the snapshot covers and kept from the detectors: the snapshot is set back to
        cover none. The detectors keep their state, as when the embedded log lost events and
        numbers new ones after them."""
        try:
            last = await context.last_enqueued_sequence()
        except Exception as exc:
            # A check, not processing: an unreachable source must not stop the start.
            logger.warning("snapshot not checked against the partition's end: %s", exc)
            return
        if last is None or last >= state.covered:
            return
        logger.warning(
            "partition %s: the store's snapshot covers sequence %d, past the partition's last "
            "event %d (its numbers started again): its events go to the detectors from its "
            "start, and the detectors keep their state",
            context.partition_id,
            state.covered,
            last,
            extra={"partition": context.partition_id},
        )
        state.covered = state.observed = -1
        await self.store.save_state(
            StateSnapshot(self.consumer_group, context.partition_id, -1, _encode_snapshot(state)),
            replace=True,
        )

    async def _check_bus_holds(self, partition: str, state: _Partition) -> None:
        """Never continue silently past breaches the alert bus lost: the snapshot counts the
        breaches published up to what it covers, and the bus records the last it took in the
        same transaction as the breaches, so a bus behind the snapshot lost its last commits
        (its WAL cut or deleted, an older copy of its file put back). The lost breaches are
        published again from the store's journal, with their ids (subscribers see a breach
        they had already as a duplicate); what the journal lacks is said with its numbers.
        A failure to read or publish fails the start: new breaches would move the bus's record
        past the gap, and the next start would no longer see it."""
        numbering = self._numbering
        if numbering is None or state.numbered == 0:
            return
        held = await numbering.held_through(self.consumer_group, partition)
        first = 0 if held is None else held.number + 1
        last = state.numbered - 1
        if first > last:
            return
        found = (
            await self._journal.kept_breaches(self.consumer_group, partition, first, last)
            if self._journal is not None
            else []
        )
        if found:
            await self._publish(partition, found)
        after = "" if held is None else f" after sequence {held.sequence}"
        problem = (
            f"the alert bus lost {last - first + 1} published breaches of partition "
            f"{partition} (numbers {first}..{last}, raised by events{after} up to sequence "
            f"{state.covered}): the bus file lost its last commits"
        )
        numbers = {kept.number for kept in found}
        missing = [number for number in range(first, last + 1) if number not in numbers]
        if not missing:
            logger.error(
                "%s; published them again from the store's journal, with their ids",
                problem,
                extra={"partition": partition},
            )
            return
        lost = f"{len(missing)} breaches of partition {partition} (numbers {_ranges(missing)})"
        logger.error(
            "%s; %d published again from the store's journal, %s are not in it and are lost",
            problem,
            len(found),
            lost,
            extra={"partition": partition},
        )
        self.stats.alerts_lost(partition, lost)

    async def _check_positions(self, context: PartitionContext, covered: int) -> None:
        """Never continue silently past lost writes: the store's snapshot covers every event
        up to ``covered`` and is saved before the source checkpoint, so a checkpoint beyond it
        means the store lost writes (e.g. a power cut) and a source that ends before it lost
        events. Either way processing resumes after ``covered``, and says so; as it does when
        there is a snapshot but no checkpoint."""
        try:
            checkpointed = await context.checkpointed_sequence()
            last = await context.last_enqueued_sequence()
        except Exception as exc:
            # A check, not processing: an unreachable checkpoint store must not stop the start.
            logger.warning("positions not checked: %s", exc)
            return
        if checkpointed is not None and checkpointed > covered:
            problem = (
                f"the store covers this partition up to sequence {covered} but the source "
                f"checkpoint is at {checkpointed}: the store lost writes"
            )
        elif last is not None and last < covered:
            problem = (
                f"the source ends at sequence {last} but the store covers up to {covered}: the "
                "source lost events; new events are numbered after them"
            )
        else:
            if checkpointed is None and covered >= 0:
                # Lost, or never written (a stop between the first snapshot and its
                # checkpoint). The snapshot is saved once its events are stored: resume after
                # it, as Event Hubs does (eventhubs_partition.StartingPositions).
                await context.resume_after(covered)
                logger.warning(
                    "partition %s has no checkpoint but a snapshot covering sequence %d: "
                    "reading from sequence %d",
                    context.partition_id,
                    covered,
                    covered + 1,
                    extra={"partition": context.partition_id},
                )
            return
        await context.resume_after(covered)
        logger.error(
            "%s; reading again from sequence %d",
            problem,
            covered + 1,
            extra={"partition": context.partition_id},
        )

    def watermark_after(
        self, watermark: datetime | None, events: Sequence[ReceivedEvent]
    ) -> datetime | None:
        """The watermark ``events`` move ``watermark`` to, as processing them would (in any
        order: it is their highest mark), storing nothing: for a replay of a part of a
        partition, the mark of the events before it."""
        return self._transform(watermark, events, datetime.now(UTC), _NOTHING)[2]

    def seed(self, partition_id: str, watermark: datetime | None) -> None:
        """Raise the initialised partition's watermark to ``watermark``: a replay that starts
        within a partition, where the live processor had seen the events before."""
        state = self._partitions[partition_id]
        if watermark is not None and (state.watermark is None or watermark > state.watermark):
            state.watermark = watermark

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        with log_context(partition=context.partition_id):
            try:
                await self._on_batch(context, events)
            except Misconfigured as exc:
                self._give_up(exc)
                raise

    async def _on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        started = time.perf_counter()
        state = self._partitions[context.partition_id]
        now = datetime.now(UTC)
        # Events a snapshot covers were stored before it was saved (a restart between the
        # snapshot and the source checkpoint reads them again): stored, they stay as they are.
        if events[0].sequence <= state.covered:
            fresh = [event for event in events if event.sequence > state.covered]
            if not fresh:
                # Still progress: the lag (``--until-idle``, readiness) and the source
                # checkpoint catch up with the snapshot, or they would stay behind until the
                # next new event, and forever at the end of a stream.
                await self._done(context, state, events[-1], [], [], [], 0.0)
                return
            events = fresh
        watermark = state.watermark
        try:
            documents, quarantined = await self._store(state, events, now)
            self.stats.store_error = None
            detecting = time.perf_counter()
            detected, raised_at = self._detect(state, documents)
            self.stats.detected(time.perf_counter() - detecting)
            if detected:
                state.outbox.extend(detected)
                state.outbox_at.extend(raised_at)
                state.numbered += len(detected)
            breaches = state.outbox
            if breaches:
                await self._publish_outbox(context.partition_id, state)
                state.outbox, state.outbox_at = [], []
        except BaseException:
            # The source delivers this batch again (or, after a crash, from the checkpoint):
            # its events must be decided from the watermark before it, as on a first attempt,
            # not from the one a part of this attempt (a split half, a write before a failed
            # publish) already moved.
            state.watermark = watermark
            raise
        await self._done(
            context,
            state,
            events[-1],
            documents,
            quarantined,
            breaches,
            time.perf_counter() - started,
        )

    async def _done(
        self,
        context: PartitionContext,
        state: _Partition,
        last: ReceivedEvent,
        documents: list[TelemetryDocument],
        quarantined: list[QuarantineRecord],
        breaches: list[Breach],
        seconds: float,
    ) -> None:
        """A batch is durable: count it, and checkpoint when the interval has passed."""
        if quarantined:
            # Inputs HTTP ingest refused and logged are counted by ingest (stream.metrics).
            quarantined = [record for record in quarantined if record.source != INGEST_SOURCE]
        self.stats.record(
            context.partition_id, last, len(documents), quarantined, breaches, seconds
        )
        state.pending = last
        if time.monotonic() - state.last_checkpoint >= self.checkpoint_interval_s:
            await self._checkpoint(context, state)

    async def _publish_outbox(self, partition: str, state: _Partition) -> None:
        """Keep the outbox's breaches in the store's journal (when the bus is one that records
        what it holds), then publish them."""
        first = state.numbered - len(state.outbox)
        kept = [
            KeptBreach(first + index, sequence, breach)
            for index, (breach, sequence) in enumerate(
                zip(state.outbox, state.outbox_at, strict=True)
            )
        ]
        if self._journal is not None:
            try:
                await self._journal.keep_breaches(self.consumer_group, partition, kept)
            except Exception as exc:
                self.stats.store_failed(exc)
                raise
        await self._publish(partition, kept)

    async def _publish(self, partition: str, kept: list[KeptBreach]) -> None:
        """Publish durably. A failure that is passing or not the breaches' (bus unreachable,
        busy, set up wrongly) fails the batch, which is delivered again. A bus that refuses
        breaches for good (a message it cannot take) must not stop the partition: the batch is
        split until they are found, and each is kept in quarantine (``breach_unpublishable``,
        its JSON as the raw bytes) and logged, so it is not lost either."""
        assert self.publisher is not None
        breaches = [item.breach for item in kept]
        try:
            if self._numbering is not None:
                last = kept[-1]
                await self._numbering.publish_numbered(
                    breaches,
                    PublishedPosition(self.consumer_group, partition, last.number, last.sequence),
                )
            else:
                await self.publisher.publish(breaches)
        except Exception as exc:
            self.stats.publish_failed(exc)
            if is_not_the_events(exc):
                raise
            if len(kept) == 1:
                await self._keep_unpublishable(breaches[0], exc)
                return
            middle = len(kept) // 2
            await self._publish(partition, kept[:middle])
            await self._publish(partition, kept[middle:])
            return
        self.stats.publish_error = None

    async def _keep_unpublishable(self, breach: Breach, exc: Exception) -> None:
        await self.store.write([], [self.enricher.unpublishable(breach, exc, datetime.now(UTC))])
        logger.error(
            "the alert bus refused a breach for good; it is kept in quarantine",
            exc_info=exc,
            extra={"breach_id": breach.breach_id, "app": breach.app_id},
        )
        # Dealt with: readiness reports buses failing now, not a breach kept long ago.
        self.stats.publish_error = None

    async def on_idle(self, context: PartitionContext) -> None:
        """Checkpoint the last batches once the interval has passed: without a next batch they
        stayed behind the checkpoint for as long as the partition was idle (shown as lag,
        processed and counted again after a restart)."""
        key = f"partition {context.partition_id}"
        state = self._partitions.get(context.partition_id)
        if state is None or state.pending is None:
            self._idle_failures.succeeded(key)  # a batch's checkpoint came since
            return
        if time.monotonic() - state.last_checkpoint < self.checkpoint_interval_s:
            return
        if state.observed > state.pending.sequence:
            return  # a failed batch's breaches are unpublished: see on_partition_close
        with log_context(partition=context.partition_id):
            try:
                await self._checkpoint(context, state)
            except Misconfigured as exc:
                self._give_up(exc)
            except EvalstreamError as exc:  # the next idle turn or batch tries again
                self._idle_failures.failed(key, exc)
            else:
                self._idle_failures.succeeded(key)

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        self._idle_failures.given_up(f"partition {context.partition_id}")
        state = self._partitions.pop(context.partition_id, None)
        # After losing ownership another instance checkpoints this partition: writing ours
        # could move its checkpoint backwards.
        if state is not None and reason is CloseReason.SHUTDOWN:
            if state.pending is not None and state.observed > state.pending.sequence:
                # A batch failed after its events reached the detectors (its breaches not
                # published: the bus down or busy). A snapshot now would hold the detectors
                # past the checkpoint, and the next owner would feed them those events again
                # and never publish the breaches: it resumes from the last snapshot instead.
                logger.warning(
                    "partition closed with breaches unpublished: not checkpointed",
                    extra={"partition": context.partition_id, "breaches": len(state.outbox)},
                )
            else:
                try:
                    await self._checkpoint(context, state)
                except PartitionLost as exc:
                    logger.warning("partition closed without a checkpoint: %s", exc)
                except Misconfigured as exc:
                    if self.failure is None:
                        raise
                    # Stopping for that reason already, said once: the partition resumes
                    # from its last checkpoint.
                    logger.debug(
                        "partition closed without a checkpoint: %s",
                        type(exc).__name__,
                        extra={"partition": context.partition_id},
                    )
        self.stats.detach(context.partition_id)
        logger.info(
            "partition closed", extra={"partition": context.partition_id, "reason": reason.value}
        )

    async def _store(
        self, state: _Partition, events: list[ReceivedEvent], now: datetime
    ) -> tuple[list[TelemetryDocument], list[QuarantineRecord]]:
        """Transform and durably write the events; the watermark moves only once they are
        written. A failure that is not transient splits the batch until the events that fail
        on their own are found: those are quarantined (``processing_error``), the rest stored,
        so no event can stop a partition. A transient one (store unavailable, throttled)
        fails the batch, which the source delivers again."""
        try:
            return await self._write(state, events, now)
        except Exception as exc:
            if is_not_the_events(exc):
                self.stats.store_failed(exc)
                raise
            if len(events) == 1:
                return [], [await self._quarantine_failed(events[0], exc, now)]
            logger.warning(
                "batch failed (%s: %s); splitting it to find the events that fail",
                type(exc).__name__,
                self._scrubbed(exc, events),
                extra={"first_sequence": events[0].sequence, "events": len(events)},
            )
        middle = len(events) // 2
        first_documents, first_quarantined = await self._store(state, events[:middle], now)
        documents, quarantined = await self._store(state, events[middle:], now)
        return first_documents + documents, first_quarantined + quarantined

    async def _write(
        self, state: _Partition, events: list[ReceivedEvent], now: datetime
    ) -> tuple[list[TelemetryDocument], list[QuarantineRecord]]:
        documents, quarantined, watermark = self._transform(state.watermark, events, now)
        conflicts = await self.store.write(documents, quarantined)
        if conflicts:
            documents, refused = self._refuse(documents, conflicts, now)
            await self.store.write([], refused)
            quarantined += refused
        state.watermark = watermark
        return documents, quarantined

    async def _quarantine_failed(
        self, event: ReceivedEvent, exc: Exception, now: datetime
    ) -> QuarantineRecord:
        # The exception may quote the event, user id included: that is hashed as in the raw.
        text = self._scrubbed(exc, [event])
        issue = ValidationIssue(
            code="processing_error",
            location="$",
            message=f"processing this event failed: {type(exc).__name__}: {text}"[:2000],
        )
        record = self.enricher.quarantine(Rejected(0, event.body, (issue,)), event, now)
        try:
            await self.store.write([], [record])
        except Exception as refused:
            if is_not_the_events(refused):
                raise
            # The record itself is refused (its raw bytes, most likely): keep its place, size
            # and reason without them rather than let the event stop the partition.
            message = f"{issue.message}; its quarantine record was refused too: {refused}"
            record = record.model_copy(
                update={
                    "raw": "",
                    "truncated": True,
                    "issues": [issue.model_copy(update={"message": message[:2000]})],
                }
            )
            await self.store.write([], [record])
        # Its traceback, ending in the message as quarantined (not the exception's own, nor
        # the ones it was raised from).
        shown = ScrubbedError(f"{type(exc).__name__}: {text}")
        logger.error(
            "event quarantined: processing it failed",
            exc_info=(ScrubbedError, shown, exc.__traceback__),
            extra={"sequence": event.sequence},
        )
        return record

    def _scrubbed(self, exc: Exception, events: Sequence[ReceivedEvent]) -> str:
        """The message of ``exc`` with the user ids of ``events`` hashed as in quarantine."""
        text = str(exc)
        for event in events:
            text = scrub_user_ids_in_text(text, event.body, self.enricher.user_hash)
        return text

    def _transform(
        self,
        watermark: datetime | None,
        events: Sequence[ReceivedEvent],
        now: datetime,
        selection: Selection | None = None,
    ) -> tuple[list[TelemetryDocument], list[QuarantineRecord], datetime | None]:
        """Documents and quarantine records of the events, and the watermark after them.

        Every decision depends on the event and its source position only: the future-skew
        limit counts from the enqueued time, not from now, and an event moves the watermark
        no further than its enqueued time (one event from a clock far ahead cannot make the
        partition's later events late). Inputs the selection (``selection``, else the
        pipeline's: a replay's range) leaves out give nothing, but its accepted events move
        the watermark as they did live: whether a kept event is late depends on every event
        the partition held before it, of any app and time."""
        documents: list[TelemetryDocument] = []
        quarantined: list[QuarantineRecord] = []
        decode, common_event, logged_event, document, quarantine = (
            self.decoder.decode,
            self.decoder.common_event,
            self.decoder.logged_event,
            self.enricher.document,
            self.enricher.quarantine,
        )
        lateness = self.lateness
        # The selection's test is written out in the loop: a call per event is a measurable
        # share of what a replay adds, and a live pipeline (no selection) skips it.
        select = self.selection if selection is None else selection
        start, end, apps = (select.start, select.end, select.apps) if select else (now, now, None)
        rejected: Sequence[Rejected]
        found: Sequence[tuple[int, TelemetryEvent]]
        for event in events:
            enqueued = event.enqueued_time
            # Most inputs are one valid event, taken without a Decoded: a producer's body of the
            # common shape, or a record the embedded log holds for an event evalstream
            # validated (a user pair, neither SCRUBBED nor REFUSED), its canonical JSON rebuilt.
            user = event.user
            refused = None
            if user is None:
                single = common_event(event.body, enqueued)
                canonical = None
            elif user[0] == REFUSED:
                # Rejected as sent, logged scrubbed beside that decision (stream.privacy).
                single, refused = None, refusal(user[1], event.body)
            elif user != SCRUBBED:
                single = logged_event(event.body, enqueued)
                canonical = event.body
            else:
                single = None
            if single is not None:
                found = ((0, single),)
                rejected = ()
            elif refused is not None:
                found, rejected = (), (refused,)
            else:
                decoded = decode(event.body, enqueued, common=user is not None)
                found = [(accepted.index, accepted.event) for accepted in decoded.accepted]
                rejected = decoded.rejected
                canonical = None
            for index, accepted in found:
                timestamp = accepted.timestamp
                late = watermark is not None and timestamp < watermark - lateness
                seen = timestamp if timestamp < enqueued else enqueued
                if watermark is None or seen > watermark:
                    watermark = seen
                if select is not None and not (
                    start <= timestamp < end and (apps is None or accepted.app_id in apps)
                ):
                    continue
                documents.append(document(accepted, event, index, now, late, canonical))
            for refused in rejected:
                if select is None or select.keeps_rejected(refused.app_id, enqueued):
                    quarantined.append(quarantine(refused, event, now))
        return documents, quarantined, watermark

    def _refuse(
        self, documents: list[TelemetryDocument], conflicts: list[TelemetryDocument], now: datetime
    ) -> tuple[list[TelemetryDocument], list[QuarantineRecord]]:
        """The documents the store kept, and quarantine records for those it refused (their
        event_id is held by another event); refused ones are not fed to detectors."""
        refused = {id(doc) for doc in conflicts}
        for doc in conflicts:
            logger.warning(
                "event_id held by a different event: quarantined",
                extra={"app": doc.app_id, "event_id": doc.event_id},
            )
        kept = [doc for doc in documents if id(doc) not in refused]
        return kept, [self.enricher.conflict(doc, now) for doc in conflicts]

    def _detect(
        self, state: _Partition, documents: list[TelemetryDocument]
    ) -> tuple[list[Breach], list[int]]:
        """The breaches the documents raise, and the sequence of the event that raised each."""
        hot = state.hot
        if hot is None:
            return [], []
        observed = state.observed
        breaches: list[Breach] = []
        raised_at: list[int] = []
        for doc in documents:
            # Events a restored snapshot already covers, or that a failed attempt of this batch
            # already fed, update documents but not detectors.
            sequence = doc.ingest.sequence
            if sequence > observed:
                try:
                    found = hot.observe(doc)
                except Exception as exc:
                    self._detector_failed(doc, exc)
                    continue
                if found:
                    breaches.extend(found)
                    raised_at.extend([sequence] * len(found))
        if documents:
            state.observed = max(observed, documents[-1].ingest.sequence)
        return breaches, raised_at

    def _detector_failed(self, doc: TelemetryDocument, exc: Exception) -> None:
        """A detector that fails on one event must not stop the partition: the event is
        stored already, so it is only left out of detection, loudly. Detectors are
        deterministic, so a replay fails on the same event and ends in the same state."""
        self.stats.detector_failed()
        logger.error(
            "detectors failed on a stored event; it is left out of detection",
            exc_info=exc,
            extra={"sequence": doc.ingest.sequence, "app": doc.app_id, "document_id": doc.id},
        )

    async def _checkpoint(self, context: PartitionContext, state: _Partition) -> None:
        event = state.pending
        if event is None:
            return
        not_written = f"snapshot and checkpoint at sequence {event.sequence} not written"
        # This batch finished after the source let the partition go (another processor may
        # own it): that owner may have saved a snapshot and checkpoint already, which ours
        # must not replace.
        try:
            owned = await context.owned()
        except PartitionLost as exc:
            raise PartitionLost(f"{exc}: {not_written}") from exc
        if not owned:
            raise PartitionLost(
                f"partition {context.partition_id} is owned by another processor now: {not_written}"
            )
        state.covered = max(state.covered, event.sequence)
        # The store keeps a snapshot covering a later position (an owner's that raced this
        # one); the checkpoint likewise never moves backwards (PartitionContext.checkpoint).
        try:
            await self.store.save_state(
                StateSnapshot(
                    self.consumer_group,
                    context.partition_id,
                    state.covered,
                    _encode_snapshot(state),
                )
            )
        except Exception as exc:
            self.stats.store_failed(exc)  # readiness says so, as for a failing write
            raise
        await context.checkpoint(event)
        state.pending = None
        state.last_checkpoint = time.monotonic()
        self.stats.checkpointed(context.partition_id)
