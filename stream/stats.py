"""Counters of a running processor and the periodic one-line status built from them."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas import Breach, BreachState
from stream.ports import PartitionContext, ReceivedEvent


@dataclass
class _PartitionProgress:
    context: PartitionContext
    last_sequence: int = -1


@dataclass
class ProcessorStats:
    events: int = 0
    documents: int = 0
    quarantined: int = 0
    breaches_opened: int = 0
    breaches_resolved: int = 0
    started: float = field(default_factory=time.monotonic)
    # Called with every breach the processor published (the CLI prints them).
    on_breach: Callable[[Breach], None] | None = None
    _partitions: dict[str, _PartitionProgress] = field(default_factory=dict)
    _last_report: tuple[float, int] = (0.0, 0)

    async def attach(self, context: PartitionContext) -> None:
        checkpointed = await context.checkpointed_sequence()
        self._partitions[context.partition_id] = _PartitionProgress(
            context, -1 if checkpointed is None else checkpointed
        )

    def detach(self, partition_id: str) -> None:
        self._partitions.pop(partition_id, None)

    def record(
        self,
        partition_id: str,
        last: ReceivedEvent,
        documents: int,
        quarantined: int,
        breaches: Sequence[Breach],
    ) -> None:
        progress = self._partitions.get(partition_id)
        if progress is not None:
            progress.last_sequence = last.sequence
        self.documents += documents
        self.quarantined += quarantined
        self.events += documents + quarantined
        for breach in breaches:
            if self.on_breach is not None:
                self.on_breach(breach)
            if breach.state is BreachState.OPENED:
                self.breaches_opened += 1
            else:
                self.breaches_resolved += 1

    async def lag(self) -> dict[str, int | None]:
        """Events enqueued but not yet processed, per owned partition."""
        lags: dict[str, int | None] = {}
        for partition_id, progress in sorted(self._partitions.items()):
            last = await progress.context.last_enqueued_sequence()
            lags[partition_id] = None if last is None else max(0, last - progress.last_sequence)
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
        return (
            f"{rate:,.0f} events/s | stored {self.documents:,} | quarantined {self.quarantined:,} "
            f"| breaches opened {self.breaches_opened} resolved {self.breaches_resolved} "
            f"| lag {lag_text or '-'}"
        )
