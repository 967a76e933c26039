"""Where claimed Event Hubs partitions start (StartingPositions.settle), with the partition ends,
the snapshots and the checkpoint blobs as fakes."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from stream.sources.eventhubs_start import (
    START_OFFSET,
    PartitionEnd,
    StartingPositions,
    partition_end,
)

WHERE = {"fully_qualified_namespace": "ns", "eventhub_name": "hub", "consumer_group": "$Default"}


class Blobs:
    """The checkpoint writes settle makes."""

    def __init__(self) -> None:
        self.updated: list[dict[str, Any]] = []
        self.reset: list[dict[str, Any]] = []

    async def update_checkpoint(self, checkpoint: dict[str, Any], **kwargs: Any) -> None:
        self.updated.append(checkpoint)

    async def reset_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.reset.append(checkpoint)


def positions(
    ends: dict[str, PartitionEnd], covered: dict[str, int], default: str = "-1"
) -> StartingPositions:
    async def snapshots(partitions: list[str]) -> dict[str, int]:
        return {p: covered[p] for p in partitions if p in covered}

    async def end(partition: str) -> PartitionEnd:
        return ends[partition]

    starting = StartingPositions(default, snapshots)
    starting.ends = end
    return starting


def checkpoint(partition: str, sequence: int, offset: str) -> dict[str, Any]:
    return {**WHERE, "partition_id": partition, "offset": offset, "sequence_number": sequence}


async def test_a_snapshot_at_the_partitions_last_event_gets_a_checkpoint_there(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Nothing came after the snapshot: without a checkpoint written at start, none ever was
    (no event to checkpoint), and the lag counted the whole partition for ever."""
    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    starting = positions({"0": PartitionEnd(5195, "777")}, {"0": 5195})
    blobs = Blobs()

    rows = await starting.settle([], ["0"], blobs, WHERE)

    assert rows == blobs.updated == [checkpoint("0", 5195, "777")]
    assert dict(starting) == {}
    assert [r.getMessage() for r in caplog.records] == [
        "partition 0 has no checkpoint but a snapshot covering sequence 5195, its last event: "
        "checkpoint written there"
    ]


async def test_a_snapshot_behind_the_partitions_end_starts_after_it_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    starting = positions({"1": PartitionEnd(90, "9000")}, {"1": 40}, default="@latest")
    blobs = Blobs()

    assert await starting.settle([], ["1"], blobs, WHERE) == []
    assert starting["1"] == 40 and blobs.updated == []
    # Started by the SDK but not initialised yet when it claims the next partition: the
    # partition is settled again, and not said again.
    assert await starting.settle([], ["1"], blobs, WHERE) == []
    assert starting["1"] == 40
    assert [r.getMessage() for r in caplog.records] == [
        "partition 1 has no checkpoint but a snapshot covering sequence 40: starting after it, "
        "not at @latest"
    ]


async def test_positions_past_the_partitions_end_start_it_from_its_start_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hub deleted and created again: its numbers start again. The new events were
    skipped (never read), silently."""
    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    ends = {
        "0": PartitionEnd(700, "5000"),
        "1": PartitionEnd(-1, None),
        "2": PartitionEnd(300, "3000"),
        "3": PartitionEnd(900, "9000"),
    }
    starting = positions(ends, {"0": 3039, "1": 12, "2": 250, "3": 800}, default="@latest")
    blobs = Blobs()
    listed = [
        checkpoint("0", 3039, "40000"),  # checkpoint and snapshot past the end
        checkpoint("2", 12225, "90000"),  # the checkpoint only
        checkpoint("3", 800, "8000"),  # within: as it is
    ]

    rows = await starting.settle(listed, ["0", "1", "2", "3"], blobs, WHERE)

    start = {"offset": START_OFFSET, "sequence_number": -1}
    assert sorted(rows, key=lambda row: row["partition_id"]) == [
        {**WHERE, "partition_id": "0", **start},
        {**WHERE, "partition_id": "1", **start},  # a snapshot past the end, no checkpoint
        {**WHERE, "partition_id": "2", **start},
        checkpoint("3", 800, "8000"),
    ]
    # Reset, so that the first checkpoint in the new numbering is not refused as a move back.
    assert blobs.reset == [
        {**WHERE, "partition_id": "0", **start},
        {**WHERE, "partition_id": "2", **start},
    ]
    assert starting["0"] == starting["1"] == starting["2"] == START_OFFSET
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "partition 0: its checkpoint at sequence 3039 and snapshot at sequence 3039 but its "
        "last event is 700: the event hub was deleted and created again (its sequence numbers "
        "start again); reading the partition from its start (what the store holds is written "
        "again unchanged)",
        "partition 1: its snapshot at sequence 12 but it has no event: the event hub was "
        "deleted and created again (its sequence numbers start again); reading the partition "
        "from its start (what the store holds is written again unchanged)",
        "partition 2: its checkpoint at sequence 12225 but its last event is 300: the event "
        "hub was deleted and created again (its sequence numbers start again); reading the "
        "partition from its start (what the store holds is written again unchanged)",
    ]
    # Settled again before they initialised (the checkpoints now reset): not said again.
    caplog.clear()
    again = [{**WHERE, "partition_id": p, **start} for p in ("0", "2")]
    await starting.settle(again, ["0", "1", "2"], blobs, WHERE)
    assert [r for r in caplog.records if r.levelno == logging.ERROR] == []


async def test_a_snapshot_set_back_to_cover_nothing_is_no_position(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # What the processor leaves of a snapshot past the end of a hub created again.
    caplog.set_level(logging.WARNING, logger="stream.sources.eventhubs_start")
    starting = positions({"0": PartitionEnd(-1, None)}, {"0": -1}, default="@latest")
    blobs = Blobs()
    assert await starting.settle([], ["0"], blobs, WHERE) == []
    assert dict(starting) == {} and blobs.updated == blobs.reset == []
    assert caplog.records == []


def test_an_emptied_partitions_end_is_where_its_numbering_went() -> None:
    # Every event expired: no last enqueued event, but the next one is numbered 42.
    properties = {
        "last_enqueued_sequence_number": -1,
        "beginning_sequence_number": 42,
        "is_empty": True,
        "last_enqueued_offset": "-1",
    }
    assert partition_end(properties) == PartitionEnd(41, None)
    assert partition_end(
        {"last_enqueued_sequence_number": 7, "is_empty": False, "last_enqueued_offset": "70"}
    ) == PartitionEnd(7, "70")
