"""Counters of a running processor: the periodic one-line status, the Prometheus metrics
(``stream.metrics``) and what readiness looks at (who holds each partition, last batch, last
checkpoint, failing writes and publishes per partition)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from schemas import Breach, BreachState, QuarantineRecord
from stream.metrics import INGEST_QUARANTINED, ProcessorMetrics, counted, quarantine_code
from stream.ports import PartitionContext, ReceivedEvent

# The holder of a partition this process processes itself (a supervisor's workers are held
# under their slot numbers, 0 and up).
THIS_PROCESS: Final = -1

# A partition a supervisor watches is without a holder while it moves between workers (the
# previous one's batch in flight and checkpoint) and at the command's start, until a worker has
# started: its interpreter imports the pipeline first (measured on the project's 2-core machine:
# 1-2 s for a restarted worker, 3.5 s for the command's two starting together; more when it is
# loaded). Longer than this, nobody is processing it.
MAX_UNHELD_S: Final = 20.0


@dataclass
class _Batch:
    """A batch's counts, held back until its partition's checkpoint covers it."""

    last_sequence: int
    documents: int
    quarantine_codes: Sequence[str]
    breaches: Sequence[Breach]


@dataclass
class _PartitionProgress:
    context: PartitionContext
    last_sequence: int = -1
    # Where its holder resumed counting (it counts only what follows: its checkpoint, or its
    # snapshot when later), and up to where the batches' counts are final: the checkpoint it
    # resumed from, then each one it writes. Lag counts from the latter.
    resumed_sequence: int = -1
    counted_sequence: int = -1
    attached_at: float = field(default_factory=time.monotonic)
    last_batch_at: float | None = None
    last_checkpoint_at: float | None = None
    # Who processes it: THIS_PROCESS, a worker's slot, or None (a supervisor watching it while
    # no live worker holds it: since ``released_at``, or since the start when that is None).
    holder: int | None = THIS_PROCESS
    released_at: float | None = None


@dataclass
class ProcessorStats:
    """What the processor did. The counts (events, documents, quarantined, breaches; the status
    line's and the metrics') are those of batches a checkpoint covers: a batch is counted once
    its partition's checkpoint covers it, so a batch processed again from the checkpoint (its
    holder killed, or the partition closed without one) is counted once, by whoever
    checkpoints it. Until then it is in flight and shows in the lag."""

    events: int = 0
    documents: int = 0
    quarantined: int = 0
    breaches_opened: int = 0
    breaches_resolved: int = 0
    started: float = field(default_factory=time.monotonic)
    # When the latest batch's outcome was recorded (monotonic; None before the first).
    last_batch_at: float | None = None
    # Called with every breach the processor published (the CLI prints them).
    on_breach: Callable[[Breach], None] | None = None
    metrics: ProcessorMetrics = field(default_factory=ProcessorMetrics)
    # Set while the latest attempt failed, cleared by the next success: readiness reports them.
    store_error: str | None = None
    publish_error: str | None = None
    # Under a supervisor: its processing workers (running, configured); readiness names them
    # when no partition is held.
    workers: tuple[int, int] | None = None
    # Under a supervisor: workers it found stuck and killed (slot: what readiness says), until
    # that slot's next worker has started.
    stuck: dict[int, str] = field(default_factory=dict)
    # Breaches the alert bus lost that nothing could give again (partition: which), found at
    # start (stream.pipeline): the status line says them for as long as the run lasts.
    lost_alerts: dict[str, str] = field(default_factory=dict)
    _partitions: dict[str, _PartitionProgress] = field(default_factory=dict)
    _open: dict[str, str] = field(default_factory=dict)
    # Per partition: batches processed, not yet covered by a checkpoint (held back).
    _uncounted: dict[str, list[_Batch]] = field(default_factory=dict)
    _last_report: tuple[float, int] = (0.0, 0)

    async def attach(
        self, context: PartitionContext, holder: int | None = THIS_PROCESS, covered: int = -1
    ) -> None:
        """Follow a partition from its checkpoint on, or without one from ``covered`` (where the
        source resumes then: after the snapshot), processed by ``holder``: this process, a
        supervisor's worker (its slot), or None for a supervisor that watches a partition no
        worker has taken yet. ``covered``: the sequence its stored snapshot covers, when later
        (events up to it are not processed again). A previous holder's batches held back are
        counted up to where this one resumes; the rest it processes, and counts, again."""
        checkpointed = await context.checkpointed_sequence()
        position = covered if checkpointed is None else checkpointed
        resumed = max(position, covered)
        self._partitions[context.partition_id] = _PartitionProgress(
            context, position, resumed, position, holder=holder
        )
        self._count_held()
        if holder is not None:
            self._count_up_to(context.partition_id, resumed)
            self._uncounted.pop(context.partition_id, None)

    def detach(self, partition_id: str) -> None:
        """Stop following a partition (this process closed it): batches no checkpoint covers
        are left to its next owner, which processes and counts them again."""
        self._partitions.pop(partition_id, None)
        self._uncounted.pop(partition_id, None)
        self._count_held()
        for gauge in (self.metrics.lag, self.metrics.checkpoint_age):
            with contextlib.suppress(KeyError):  # never scraped while owned
                gauge.remove(partition_id)

    def released(self, holder: int, partition_id: str | None = None) -> None:
        """``holder`` (a worker) let go of ``partition_id``, or of every partition it held (it
        exited). A partition another worker has taken since stays with that one: the workers'
        reports cross separate pipes and may arrive out of order."""
        now = time.monotonic()
        for key, progress in self._partitions.items():
            if progress.holder == holder and partition_id in (None, key):
                progress.holder, progress.released_at = None, now
        self._count_held()

    def held_by(self, holder: int) -> list[str]:
        """The partitions ``holder`` holds, in order."""
        return sorted(
            (key for key, progress in self._partitions.items() if progress.holder == holder),
            key=lambda key: (len(key), key),
        )

    def _count_held(self) -> None:
        self.metrics.partitions.set(
            sum(1 for progress in self._partitions.values() if progress.holder is not None)
        )

    def record(
        self,
        partition_id: str,
        last: ReceivedEvent,
        documents: int,
        quarantined: Sequence[QuarantineRecord],
        breaches: Sequence[Breach],
        seconds: float = 0.0,
    ) -> None:
        self.record_counts(
            partition_id,
            last.sequence,
            documents,
            [quarantine_code(record) for record in quarantined],
            breaches,
            seconds,
        )

    def record_counts(
        self,
        partition_id: str,
        last_sequence: int,
        documents: int,
        quarantine_codes: Sequence[str],
        breaches: Sequence[Breach],
        seconds: float = 0.0,
        holder: int | None = THIS_PROCESS,
    ) -> None:
        """``record`` from what a batch's outcome reduces to (what a worker process sends its
        supervisor, ``holder`` its slot): the quarantine records' first issue codes instead of
        the records. Counted once a checkpoint covers it (``checkpointed``); a batch of a
        partition nobody is followed for is counted at once. A batch of a previous holder,
        reported after the partition's next holder took it (their reports cross separate
        pipes), is counted if that one resumed after it, else left to it."""
        self.last_batch_at = now = time.monotonic()
        self.metrics.batch_seconds.observe(seconds)
        batch = _Batch(last_sequence, documents, quarantine_codes, breaches)
        progress = self._partitions.get(partition_id)
        if progress is None:
            self._count(batch)
        elif progress.holder != holder:
            if last_sequence <= progress.resumed_sequence:
                self._count(batch)
        else:
            # Events a snapshot covers, read again from an older checkpoint, move nothing back.
            progress.last_sequence = max(progress.last_sequence, last_sequence)
            progress.last_batch_at = now
            self._uncounted.setdefault(partition_id, []).append(batch)

    def _count_up_to(self, partition_id: str, sequence: int) -> None:
        """Count the held-back batches of ``partition_id`` up to ``sequence``."""
        batches = self._uncounted.get(partition_id, [])
        for batch in batches:
            if batch.last_sequence <= sequence:
                self._count(batch)
        self._uncounted[partition_id] = [b for b in batches if b.last_sequence > sequence]

    def _count(self, batch: _Batch) -> None:
        documents, quarantine_codes, breaches = (
            batch.documents,
            batch.quarantine_codes,
            batch.breaches,
        )
        self.documents += documents
        self.quarantined += len(quarantine_codes)
        self.events += documents + len(quarantine_codes)
        metrics = self.metrics
        metrics.events.labels("stored").inc(documents)
        metrics.events.labels("quarantined").inc(len(quarantine_codes))
        for code in quarantine_codes:
            metrics.quarantined.labels(code).inc()
        for breach in breaches:
            if self.on_breach is not None:
                self.on_breach(breach)
            metrics.breaches.labels(breach.state.value, breach.severity.value).inc()
            if breach.state is BreachState.OPENED:
                self.breaches_opened += 1
                self._open[breach.breach_id] = breach.severity.value
            elif breach.state is BreachState.ESCALATED:  # same incident, higher severity
                self._open[breach.breach_id] = breach.severity.value
            else:
                self.breaches_resolved += 1
                self._open.pop(breach.breach_id, None)
        for severity in ("warning", "critical"):
            metrics.open_breaches.labels(severity).set(
                sum(1 for value in self._open.values() if value == severity)
            )

    def checkpointed(self, partition_id: str, holder: int | None = THIS_PROCESS) -> None:
        """``holder`` checkpointed the partition after its latest batch: its batches count."""
        progress = self._partitions.get(partition_id)
        if progress is None or progress.holder != holder:
            return  # a previous holder's, reported late: ``attach`` counted its batches
        progress.last_checkpoint_at = time.monotonic()
        progress.counted_sequence = progress.last_sequence
        self._count_up_to(partition_id, progress.last_sequence)

    def detected(self, seconds: float) -> None:
        """The hot-path detectors took ``seconds`` over one batch."""
        self.metrics.detector_seconds.inc(seconds)

    def detector_failed(self) -> None:
        """The detectors failed on one stored event (left out of detection)."""
        self.metrics.detector_failures.inc()

    def store_failed(self, error: BaseException) -> None:
        self.store_error = f"{type(error).__name__}: {error}"
        self.metrics.store_failures.inc()

    def publish_failed(self, error: BaseException) -> None:
        self.publish_error = f"{type(error).__name__}: {error}"
        self.metrics.publish_failures.inc()

    def alerts_lost(self, partition_id: str, which: str) -> None:
        self.lost_alerts[partition_id] = which

    async def refresh(self) -> None:
        """Set the gauges read from the source (lag) and the clock (checkpoint age)."""
        lags = await self.lag()
        now = time.monotonic()
        for partition_id, progress in self._partitions.items():
            lag = lags.get(partition_id)
            if lag is not None:
                self.metrics.lag.labels(partition_id).set(lag)
            since = progress.last_checkpoint_at or progress.attached_at
            self.metrics.checkpoint_age.labels(partition_id).set(now - since)

    async def problems(self, max_silence_s: float) -> list[str]:
        """Why this processor is not ready, or nothing: a worker found stuck (and killed); no
        partition owned; a partition no worker has taken since the start, or none has held for
        MAX_UNHELD_S; a partition with work waiting but no batch or checkpoint for
        ``max_silence_s``; failing writes or publishes."""
        found = [self.stuck[slot] for slot in sorted(self.stuck)]
        held = any(progress.holder is not None for progress in self._partitions.values())
        if not held:
            found.append("no partition owned" + self._workers_running())
        lags = await self.lag()
        now = time.monotonic()
        for partition_id, progress in sorted(self._partitions.items()):
            if progress.holder is None and held:  # else "no partition owned" says it all
                if progress.released_at is None:
                    found.append(f"partition {partition_id}: not taken by a worker yet")
                elif now - progress.released_at > MAX_UNHELD_S:
                    found.append(
                        f"partition {partition_id}: no live worker has held it for "
                        f"{now - progress.released_at:.0f} s"
                    )
            if not lags.get(partition_id):
                continue  # caught up: silence is fine
            batch = progress.last_batch_at or progress.attached_at
            checkpoint = progress.last_checkpoint_at or progress.attached_at
            if now - batch > max_silence_s:
                found.append(
                    f"partition {partition_id}: {lags[partition_id]} events waiting, "
                    f"no batch for {now - batch:.0f} s"
                )
            elif now - checkpoint > max_silence_s:
                found.append(
                    f"partition {partition_id}: no checkpoint for {now - checkpoint:.0f} s"
                )
        if self.store_error:
            found.append(f"store: {self.store_error}")
        if self.publish_error:
            found.append(f"alert bus: {self.publish_error}")
        return found

    def _workers_running(self) -> str:
        if self.workers is None:
            return ""
        running, configured = self.workers
        if not running:
            return f": no processing worker running (0 of {configured})"
        return f": {running} of {configured} processing workers running, none holds a partition"

    async def lag(self) -> dict[str, int | None]:
        """Events enqueued but not yet processed and checkpointed (counted), per owned
        partition."""
        lags: dict[str, int | None] = {}
        for partition_id, progress in sorted(self._partitions.items()):
            last = await progress.context.last_enqueued_sequence()
            lags[partition_id] = None if last is None else max(0, last - progress.counted_sequence)
        return lags

    async def status_line(self) -> str:
        now = time.monotonic()
        then, events_then = self._last_report
        if then == 0.0:
            then = self.started
        rate = (self.events - events_then) / max(now - then, 1e-9)
        self._last_report = (now, self.events)
        lags = await self.lag()
        lag_text = " ".join(f"p{p}={'?' if lag is None else lag}" for p, lag in lags.items())
        lost = "; ".join(self.lost_alerts[p] for p in sorted(self.lost_alerts))
        return (
            f"{rate:,.0f} events/s | stored {self.documents:,} | {self._quarantined_text()} "
            f"| breaches opened {self.breaches_opened} resolved {self.breaches_resolved} "
            f"| lag {lag_text or '-'}" + (f" | alert bus lost {lost}" if lost else "")
        )

    def _quarantined_text(self) -> str:
        """Every input kept in quarantine: the processor's and those ingest refused at the
        door (its counts, in this registry; an ingest worker's arrive every half second)."""
        at_ingest = int(counted(self.metrics.registry, INGEST_QUARANTINED))
        total = self.quarantined + at_ingest
        if not at_ingest:
            return f"quarantined {total:,}"
        return f"quarantined {total:,} ({at_ingest:,} by ingest)"
