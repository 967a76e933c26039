"""Replaying NDJSON files: one partition per file, a line's number is its sequence.

Lines are split as ``evalstream send`` splits them (LF, CRLF or CR; a leading byte order
mark dropped; blank lines skipped), so line numbers count non-blank lines from 0. A file has
no enqueued times: its events are given the job's creation time, fixed in the job, so the
future-skew check and ``ingest.enqueued_time`` are the same on every resume.
"""

from __future__ import annotations

import glob
from collections.abc import AsyncGenerator, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from stream.decode import split_ndjson
from stream.exceptions import ReplayMisconfigured
from stream.ports import ReceivedEvent
from stream.replay.ports import PartitionPlan, TimeBasis, Window

SOURCE_NAME = "ndjson"


def expand(patterns: Sequence[str]) -> list[Path]:
    """Paths and globs as absolute file paths, in order, each once; a pattern that matches
    no file is an error (a typo must not replay nothing)."""
    paths: list[Path] = []
    for pattern in patterns:
        matches = (
            sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        )
        if not matches:
            raise ReplayMisconfigured(f"no file matches {pattern!r}")
        for match in matches:
            path = Path(match).resolve()
            if not path.is_file():
                raise ReplayMisconfigured(f"{match}: not a readable file")
            if path not in paths:
                paths.append(path)
    return paths


def _lines(path: Path) -> Iterator[bytes]:
    try:
        with open(path, "rb") as handle:
            yield from split_ndjson(handle)
    except OSError as exc:
        raise ReplayMisconfigured(f"{path}: cannot be read: {exc.strerror or exc}") from exc


class NdjsonReader:
    source = SOURCE_NAME

    def __init__(self, paths: Sequence[Path], enqueued: datetime) -> None:
        self.paths = list(paths)
        self.enqueued = enqueued
        self.unreadable: dict[str, str] = {}

    async def __aenter__(self) -> NdjsonReader:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    async def plan(self, window: Window, max_future_skew: timedelta) -> list[PartitionPlan]:
        if window.by is TimeBasis.ENQUEUED:
            raise ReplayMisconfigured(
                "--by enqueued: NDJSON files have no enqueued times; replay them by event time"
            )
        return [
            PartitionPlan(str(path), -1, sum(1 for _ in _lines(path)) - 1) for path in self.paths
        ]

    async def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        batch: list[ReceivedEvent] = []
        for number, line in enumerate(_lines(Path(plan.partition))):
            if number <= after:
                continue
            if number > plan.last:
                break
            batch.append(ReceivedEvent(line, plan.partition, number, self.enqueued))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
