"""What a replay reads: a window of time (and apps), and readers that deliver it.

A reader plans each partition once, when the job is created: the events it will deliver are
the ones after ``after`` up to ``last``. The plan is kept in the job, so a resumed replay reads
the same range, however far the source has grown since.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Protocol

from stream.ports import ReceivedEvent


class TimeBasis(StrEnum):
    EVENT = "event"
    ENQUEUED = "enqueued"


def earlier(moment: datetime, span: timedelta) -> datetime:
    """``moment - span``, or the first moment there is when that would be before it (a window
    from the year 1: nothing was enqueued earlier)."""
    first = datetime.min.replace(tzinfo=UTC)
    return moment - span if moment - first > span else first


@dataclass(frozen=True)
class Window:
    """Events with ``start ≤ time < end`` of the apps in ``apps`` (all when empty)."""

    start: datetime
    end: datetime
    by: TimeBasis = TimeBasis.EVENT
    apps: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("the window's times must carry a time zone")
        for option, moment in (("--from", self.start), ("--to", self.end)):
            # Compared in UTC: year 1 at +14:00 is before the first moment there is.
            try:
                moment.astimezone(UTC)
            except OverflowError:
                raise ValueError(
                    f"{option} ({moment.isoformat()}) is outside the years 1-9999 in UTC"
                ) from None
        if self.start >= self.end:
            raise ValueError(
                f"--from ({self.start.isoformat()}) must be before --to ({self.end.isoformat()})"
            )

    def enqueued_from(self, max_future_skew: timedelta) -> datetime:
        """The earliest enqueued time an event of the window can have: an event time is
        accepted up to ``max_future_skew`` after its enqueued time."""
        return earlier(self.start, max_future_skew) if self.by is TimeBasis.EVENT else self.start

    def enqueued_before(self) -> datetime | None:
        """Events enqueued at or after this are outside the window (None: late events of the
        window may arrive any time after it)."""
        return self.end if self.by is TimeBasis.ENQUEUED else None


@dataclass(frozen=True)
class PartitionPlan:
    """Deliver the events of ``partition`` with ``after < sequence ≤ last``. Sequences are
    the source's positions: event numbers, or byte offsets in a file (the reader's ``unit``),
    so ``size`` counts events or bytes. A plan may be one part of a source partition, read
    beside the others (a big file by app; by byte ranges in jobs of earlier versions): then
    ``partition`` names the part (its progress in the job) and ``source`` the partition its
    events carry. A part by app reads the whole range and keeps the events whose app falls in
    ``app_buckets`` (the reader's hash of an app id, see
    stream.replay.readers.ndjson.app_bucket)."""

    partition: str
    after: int
    last: int
    source: str | None = None
    app_buckets: tuple[int, ...] = ()
    # How many parts by app its file is read in: each reads the whole file, so a part's
    # progress counts for this share of the file's (``share``).
    app_parts: int = 1

    @property
    def events_partition(self) -> str:
        """The partition the plan's events carry (documents and quarantine records)."""
        return self.source or self.partition

    @property
    def size(self) -> int:
        return max(0, self.last - self.after)

    def share(self, positions: float) -> float:
        """``positions`` of this plan as positions of its source (progress)."""
        return positions / self.app_parts


class ReplayReader(Protocol):
    """One source kind, read by position. ``source`` is the name documents and quarantine
    records carry (``ingest.source``), the live processor's for a source it reads too, so
    a replayed invalid event lands on its live quarantine record."""

    source: str
    # What a partition's positions count: "events", or "bytes" of a file.
    unit: str
    # Files or parts of the source that could not be read: name -> why (the report lists them).
    unreadable: dict[str, str]
    # Whether shadow detection keeps a detector state per planned partition, fed while reading,
    # as the live processor keeps one per partition it reads: true when the partitions are the
    # live ones (the log's, the hub's). Several files are parts of one history: their apps are
    # detected whole after reading (stream.replay.shadow). A job of one partition (one file)
    # is one stream either way: its detectors run while reading.
    detects_by_partition: bool
    # Whether events carry the source's enqueued times; false for a file, whose events all
    # carry the job's creation time.
    enqueued_times: bool
    # Whether the events before a plan are found in the live store rather than by
    # ``preceding``: a hub partition (or its Capture archive) cannot be read newest first,
    # and reading its retention up to the window before every job costs as much as the job.
    preceded_in_store: bool

    async def __aenter__(self) -> ReplayReader: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        """The partitions and position ranges that can hold events of the window."""
        ...

    def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        """The plan's events after ``after`` (a checkpoint, or the plan's start), in
        sequence order, in batches of at most ``batch_size``; ends at ``plan.last``."""
        ...

    def preceding(
        self, plan: PartitionPlan, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        """The partition's events before the plan's start, newest enqueued first (the caller
        stops once older ones can no longer matter), in batches of at most ``batch_size``.
        Whether an event of the window is late depends on them: they moved the partition's
        watermark when the live processor read them. A source without the history the live
        processor read (a file), or whose history is read from the store
        (``preceded_in_store``), yields nothing."""
        ...
