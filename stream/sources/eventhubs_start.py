"""Where each Event Hubs partition this processor claims starts reading: its checkpoint, checked
against the partition's end, or, without one, after what the store's snapshot covers.

The SDK reads the checkpoints (``CheckpointStore.list_checkpoints``) and then the starting
position mapping (``StartingPositions``) for the partitions it is about to start; ``settle``
runs in between, so both say where reading really has to start.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Container, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

# The SDK's offset for "before the first retained event" (a checkpoint blob holding it reads
# as sequence number -1: no event processed).
START_OFFSET = "-1"
# What an unreadable (or reset) checkpoint reads as: the partition's start.
START_CHECKPOINT: dict[str, Any] = {"offset": START_OFFSET, "sequence_number": -1}

# What a partition's snapshot covers, by partition id (for the ids asked, those with a snapshot).
CoveredSequences = Callable[[list[str]], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class PartitionEnd:
    """The last sequence number a partition gave (-1: none yet) and, while that event is
    still retained, its offset."""

    last_sequence: int
    last_offset: str | None


def partition_end(properties: Mapping[str, Any]) -> PartitionEnd:
    """The end of a partition from the SDK's partition properties. A partition whose events all
    expired has no last enqueued event to report; its beginning sequence number (the next
    event's) still says how far its numbering went."""
    last = int(properties["last_enqueued_sequence_number"])
    if properties.get("is_empty"):
        begin = int(properties.get("beginning_sequence_number", 0))
        return PartitionEnd(max(last, begin - 1), None)
    offset = properties.get("last_enqueued_offset")
    return PartitionEnd(last, None if offset in (None, "") else str(offset))


PartitionEnds = Callable[[str], Awaitable[PartitionEnd]]


class CheckpointWriter(Protocol):
    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None: ...

    async def reset_checkpoint(self, checkpoint: dict[str, Any]) -> None: ...


class StartingPositions(Mapping[str, str | int]):
    """Where the SDK starts a partition that has no checkpoint (it reads this mapping then):
    after the sequence the partition's snapshot covers when it has one, else ``default``; or
    the partition's start when that position is past the partition's end.

    A snapshot is saved before each checkpoint and covers every event up to its sequence, all
    of them stored. A partition with a snapshot but no checkpoint (its blob deleted, or lost
    with its container) must resume after it: the configured "latest" would skip every event
    since, and "earliest" would read again what the store holds already. When nothing came
    after it, a checkpoint is written at the snapshot's position (the partition's last event,
    whose offset the service gives), so the processor shows no lag and the next start finds it.

    A checkpoint or a snapshot past the partition's last event means the event hub was deleted
    and created again: its numbers started again, and the new events would be skipped until
    they passed the old position. Such a partition is read from its start (the store's upserts
    make what it holds already unchanged), and its checkpoint reset, which may move it back.
    """

    def __init__(self, default: str, covered: CoveredSequences | None = None) -> None:
        self.default = default
        self.covered = covered
        # The partition ends, from the service (set once the consumer client exists).
        self.ends: PartitionEnds | None = None
        self._after: dict[str, str | int] = {}

    def __getitem__(self, partition: str) -> str | int:
        # An int is a sequence number to the SDK, and the start is exclusive: the event after.
        return self._after.get(partition, self.default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._after)

    def __len__(self) -> int:
        return len(self._after)

    async def settle(
        self,
        checkpoints: list[dict[str, Any]],
        starting: list[str],
        writer: CheckpointWriter,
        where: dict[str, str],
    ) -> list[dict[str, Any]]:
        """The checkpoints the SDK starts ``starting`` (partitions claimed, not running) from,
        and this mapping for those without one. ``where``: the namespace, hub and consumer
        group of a checkpoint."""
        if not starting:
            return checkpoints
        rows = {str(row["partition_id"]): row for row in checkpoints}
        covered = await self.covered(sorted(starting)) if self.covered is not None else {}
        for partition in sorted(starting):
            # Said once: a partition the SDK started but has not initialised yet is among
            # ``starting`` again when it claims another one.
            said = self._after.pop(partition, None)
            row = rows.get(partition)
            # One set back to cover nothing (its hub created again) is no position.
            snapshot = covered.get(partition)
            snapshot = None if snapshot is None or snapshot < 0 else snapshot
            if row is None and snapshot is None:
                continue
            end = await self._end(partition)
            checkpointed = None if row is None else int(row["sequence_number"])
            position = max(
                -1 if checkpointed is None else checkpointed, -1 if snapshot is None else snapshot
            )
            if end is not None and position > end.last_sequence:
                rows[partition] = await self._restart(
                    partition, checkpointed, snapshot, end, said, writer, where
                )
            elif row is None and snapshot is not None:
                written = await self._resume_after(partition, snapshot, end, said, writer, where)
                if written is not None:
                    rows[partition] = written
        return list(rows.values())

    async def _end(self, partition: str) -> PartitionEnd | None:
        if self.ends is None:
            return None
        try:
            return await self.ends(partition)
        except Exception as exc:
            # A check: an unreachable service must not stop the start (the receive says it).
            logger.warning(
                "partition %s: its end not read, its position not checked: %s",
                partition,
                exc,
                extra={"partition": partition},
            )
            return None

    async def _restart(
        self,
        partition: str,
        checkpointed: int | None,
        snapshot: int | None,
        end: PartitionEnd,
        said: str | int | None,
        writer: CheckpointWriter,
        where: dict[str, str],
    ) -> dict[str, Any]:
        if said != START_OFFSET:
            past = " and ".join(
                f"{what} at sequence {sequence}"
                for what, sequence in (("checkpoint", checkpointed), ("snapshot", snapshot))
                if sequence is not None and sequence > end.last_sequence
            )
            last = (
                f"its last event is {end.last_sequence}"
                if end.last_sequence >= 0
                else "it has no event"
            )
            logger.error(
                "partition %s: its %s but %s: the event hub was deleted and created again (its "
                "sequence numbers start again); reading the partition from its start (what the "
                "store holds is written again unchanged)",
                partition,
                past,
                last,
                extra={"partition": partition, "last_sequence": end.last_sequence},
            )
        row = {**where, "partition_id": partition, **START_CHECKPOINT}
        if checkpointed is not None and checkpointed >= 0:
            # Never moved backwards otherwise: the first checkpoint in the new numbering
            # would be refused.
            await writer.reset_checkpoint(row)
        self._after[partition] = START_OFFSET
        return row

    async def _resume_after(
        self,
        partition: str,
        snapshot: int,
        end: PartitionEnd | None,
        said: str | int | None,
        writer: CheckpointWriter,
        where: dict[str, str],
    ) -> dict[str, Any] | None:
        if end is not None and end.last_sequence == snapshot and end.last_offset is not None:
            row = {
                **where,
                "partition_id": partition,
                "offset": end.last_offset,
                "sequence_number": snapshot,
            }
            try:
                await writer.update_checkpoint(row)
            except Exception as exc:
                # Reading after the snapshot (below) is right too; the first event's batch
                # writes the checkpoint then.
                logger.warning(
                    "partition %s: checkpoint at its snapshot's sequence %d not written: %s",
                    partition,
                    snapshot,
                    exc,
                    extra={"partition": partition},
                )
            else:
                logger.warning(
                    "partition %s has no checkpoint but a snapshot covering sequence %d, its "
                    "last event: checkpoint written there",
                    partition,
                    snapshot,
                    extra={"partition": partition, "covered_sequence": snapshot},
                )
                return row
        if said != snapshot:
            logger.warning(
                "partition %s has no checkpoint but a snapshot covering sequence %d: starting "
                "after it, not at %s",
                partition,
                snapshot,
                self.default,
                extra={"partition": partition, "covered_sequence": snapshot},
            )
        self._after[partition] = snapshot
        return None


def claimed_to_start(claimed: frozenset[str], running: Container[str]) -> list[str]:
    """The claimed partitions the SDK is about to start: those not running here yet."""
    return sorted(partition for partition in claimed if partition not in running)
