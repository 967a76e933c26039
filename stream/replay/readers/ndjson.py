"""Replaying NDJSON files: one partition per file, a line's byte offset is its sequence.

A reprocess job made for several worker processes reads a big file in parts (byte ranges cut
at line starts), beside each other: its events still carry the file as their partition, so
documents and quarantine records are the ones a whole read gives.

Lines are split as ``evalstream send`` splits them (LF, CRLF or CR; a leading byte order
mark dropped; blank lines skipped). A line's sequence is the offset of its first byte in the
file, as a log shipper keeps its place in a file: the plan is the file's size when the job was
made (no pass over the file to count its lines first), a resumed job seeks straight to its
checkpoint, and ``tail -c +<sequence + 1> FILE | head -1`` shows a quarantined line. A file has
no enqueued times: its events are given the job's creation time, fixed in the job, so the
future-skew check and ``ingest.enqueued_time`` are the same on every resume.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from collections.abc import AsyncGenerator, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from stream.decode import ndjson_lines
from stream.exceptions import ReplayMisconfigured
from stream.ports import ReceivedEvent, received
from stream.replay.ports import PartitionPlan, TimeBasis, Window

SOURCE_NAME = "ndjson"
# No part of a file smaller than this: a worker's start costs what reading ~1 MiB does.
MIN_PART_BYTES = 1 << 20
_BLOCK = 1 << 16
_LINE_END = re.compile(rb"\r\n|\r|\n")


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


def _size(path: Path) -> int:
    """The file's size now; opened, so an unreadable file is found when the job is planned."""
    try:
        with open(path, "rb") as handle:
            return os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _line_start(path: Path, at: int, size: int) -> int:
    """The offset of the first line that starts at or after ``at`` (``size`` when none),
    as ``stream.decode.ndjson_lines`` ends lines (LF, CRLF, CR)."""
    if at <= 0:
        return 0
    try:
        with open(path, "rb") as handle:
            handle.seek(at - 1)
            data = b""
            while True:
                block = handle.read(_BLOCK)
                data += block
                found = _LINE_END.search(data)
                # A CR at the end of what was read may be the first half of a CRLF.
                if found and (found.end() < len(data) or not block or data[-1:] == b"\n"):
                    return min(at - 1 + found.end(), size)
                if not block:
                    return size
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _parts(path: Path, size: int, count: int) -> list[PartitionPlan]:
    """The file as ``count`` plans of about equal bytes, each starting at a line's start."""
    if count <= 1:
        return [PartitionPlan(str(path), -1, size - 1)]
    cuts = {_line_start(path, size * k // count, size) for k in range(1, count)}
    bounds = sorted({0, size} | cuts)
    return [
        PartitionPlan(f"{path}@{first}", first - 1, end - 1, source=str(path))
        for first, end in itertools.pairwise(bounds)
    ]


def _lines(path: Path, after: int, last: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of the lines that start after ``after`` and at most at ``last``."""
    start = max(after, 0)
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            for offset, line in ndjson_lines(handle, start, last + 1):
                if offset > after:
                    yield offset, line
    except OSError as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: Path, exc: OSError) -> ReplayMisconfigured:
    return ReplayMisconfigured(f"{path}: cannot be read: {exc.strerror or exc}")


class NdjsonReader:
    source = SOURCE_NAME
    unit = "bytes"
    # Several files are parts of one history (a single one is one stream either way).
    detects_by_partition = False

    def __init__(self, paths: Sequence[Path], enqueued: datetime, parts: int = 1) -> None:
        """``parts``: plan the files as about this many parts of equal bytes (whole files,
        or a big file cut in parts), to be read beside each other."""
        self.paths = list(paths)
        self.enqueued = enqueued
        self.parts = parts
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
        sizes = [(path, _size(path)) for path in self.paths]
        part = max(sum(size for _, size in sizes) // self.parts, MIN_PART_BYTES)
        return [
            plan
            for path, size in sizes
            for plan in _parts(path, size, round(size / part) if self.parts > 1 else 1)
        ]

    async def read(
        self, plan: PartitionPlan, after: int, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        partition, enqueued = plan.events_partition, self.enqueued
        batch: list[ReceivedEvent] = []
        for offset, line in _lines(Path(partition), after, plan.last):
            batch.append(received(line, partition, offset, enqueued))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
