"""Replaying NDJSON files: one partition per file, a line's byte offset is its sequence.

A reprocess job made for several worker processes reads a big file in parts by app, beside each
other, when the file's apps share out evenly enough (each part reads the whole file and keeps its
apps' lines, so one app's lines are written in file order by one worker, as a whole read writes
them); else whole. The events still carry the file as their partition, so documents and
quarantine records are the ones a whole read gives. (Jobs planned by earlier versions may hold
parts of byte ranges; they are read as planned.)

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
import os
import re
import zlib
from collections.abc import AsyncGenerator, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType

from stream.decode import bare_line, block_lines, ndjson_blocks, refuse_wide
from stream.exceptions import NotUtf8, ReplayMisconfigured
from stream.ports import ReceivedEvent, received
from stream.replay.ports import PartitionPlan, TimeBasis, Window

SOURCE_NAME = "ndjson"
# No part of a file smaller than this: a worker's start costs what reading ~1 MiB does.
MIN_PART_BYTES = 1 << 20
_BLOCK = 1 << 16
# Parts by app: an app id's hash picks one of this many buckets, and the buckets are shared
# out between the parts by the bytes a sample of the file holds in each (this many blocks,
# evenly spaced). When the heaviest part would hold more than BALANCE times an even share (one
# app is most of the file: with two parts, more than 80 %), the file is read whole. Byte ranges
# would share it out, but two lines with one id (one app's) in two ranges would be written in
# an order left to chance, and the one written last is what the store keeps.
APP_BUCKETS = 256
_SAMPLE_BLOCKS = 64
BALANCE = 1.6
# The first "app_id" key of a line and its string value, as written (escapes and all).
_APP_ID = re.compile(rb'"app_id"\s*:\s*"([^"\\]*(?:\\.[^"\\]*)*)"')


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
    """The file's size now; opened, so an unreadable file (or one not in UTF-8) is found when
    the job is planned."""
    try:
        with open(path, "rb") as handle:
            refuse_wide(handle.read(4))
            return os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    except NotUtf8 as exc:
        raise ReplayMisconfigured(f"{path}: {exc}") from None


def _parts(path: Path, size: int, count: int) -> list[PartitionPlan]:
    """The file as ``count`` parts by app or, failing that, whole."""
    by_app = _app_parts(path, size, count) if count > 1 else None
    return by_app or [PartitionPlan(str(path), -1, size - 1)]


def app_bucket(line: bytes) -> int:
    """The bucket of a line's app: a hash of the first ``"app_id"`` string in the line, as
    written; 0 without one. No decoding (every part's reader runs this on every line of the
    file): a line whose first ``"app_id"`` is not the event's goes to another app's bucket,
    which costs balance, not correctness, since a line's bucket depends on its bytes alone and
    the parts' buckets cover every bucket once."""
    found = _APP_ID.search(line)
    return zlib.crc32(found.group(1)) % APP_BUCKETS if found else 0


def _bucket_bytes(path: Path, size: int) -> list[int]:
    """Bytes per app bucket in a sample of the file: its whole lines in _SAMPLE_BLOCKS blocks,
    evenly spaced (the whole file when it is smaller)."""
    weights = [0] * APP_BUCKETS
    step = max(size // _SAMPLE_BLOCKS, _BLOCK)
    try:
        with open(path, "rb") as handle:
            for at in range(0, size, step):
                handle.seek(at)
                lines = handle.read(_BLOCK).splitlines()
                # A block's first and last lines may be cut (the first is whole at offset 0).
                for line in lines[0 if at == 0 else 1 : -1]:
                    weights[app_bucket(line)] += len(line)
    except OSError as exc:
        raise _unreadable(path, exc) from exc
    return weights


def _app_parts(path: Path, size: int, count: int) -> list[PartitionPlan] | None:
    """The file as ``count`` parts by app, each the whole file and a set of app buckets, or
    None when they would not share the file out within BALANCE of even."""
    weights = _bucket_bytes(path, size)
    shares: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    # Heaviest first, each to the lightest part; buckets the sample did not see weigh 1, so
    # they spread too.
    for bucket in sorted(range(APP_BUCKETS), key=lambda b: (-weights[b], b)):
        lightest = loads.index(min(loads))
        shares[lightest].append(bucket)
        loads[lightest] += max(weights[bucket], 1)
    if max(loads) > BALANCE * sum(loads) / count:
        return None
    return [
        PartitionPlan(
            f"{path}#apps-{k + 1}-of-{count}", -1, size - 1, source=str(path),
            app_buckets=tuple(sorted(share)), app_parts=count,
        )
        for k, share in enumerate(shares)
    ]  # fmt: skip


def _blocks(path: Path, after: int, last: int) -> Iterator[tuple[int, bytes]]:
    """``ndjson_blocks`` of the file from the line that starts after ``after`` (or at 0) to
    the one that starts at ``last``."""
    try:
        with open(path, "rb") as handle:
            start = max(after, 0)
            handle.seek(start)
            yield from ndjson_blocks(handle, start, last + 1)
    except OSError as exc:
        raise _unreadable(path, exc) from exc


class AppLines:
    """The lines of a block whose app falls in some buckets, without splitting the others off:
    every part by app looks at every line of its file. Reading a part of half the lines of a
    100,000-line file this way took 0.25 s of CPU against 0.29 s when every line was split
    off first (three passes each, measured alone)."""

    def __init__(self, buckets: frozenset[int]) -> None:
        self.buckets = buckets
        self._mine: dict[bytes, bool] = {}  # app id as written -> its bucket is one of ours
        self._unnamed = 0 in buckets  # a line without an "app_id"

    def of(self, block: bytes, offset: int) -> Iterable[tuple[int, bytes]]:
        """(offset, piece) of the block's lines of our apps, in order; ``offset`` is the
        block's. Pieces with their endings, as splitlines cuts them."""
        if b"\r" in block and block.count(b"\r") != block.count(b"\r\n"):
            # A CR-only line ending somewhere: the block's lines as splitlines cuts them.
            buckets = self.buckets
            return [line for line in block_lines(block, offset) if app_bucket(line[1]) in buckets]
        ours: list[tuple[int, bytes]] = []
        find, search, mine, unnamed = block.find, _APP_ID.search, self._mine, self._unnamed
        at, size = 0, len(block)
        while at < size:
            end = find(b"\n", at) + 1 or size
            found = search(block, at, end)
            keep: bool | None = unnamed
            if found is not None:
                app = found[1]
                keep = mine.get(app)
                if keep is None:
                    keep = mine[app] = zlib.crc32(app) % APP_BUCKETS in self.buckets
            if keep:
                ours.append((offset + at, block[at:end]))
            at = end
        return ours


def _unreadable(path: Path, exc: OSError) -> ReplayMisconfigured:
    return ReplayMisconfigured(f"{path}: cannot be read: {exc.strerror or exc}")


class NdjsonReader:
    source = SOURCE_NAME
    preceded_in_store = False
    unit = "bytes"
    # Several files are parts of one history (a single one is one stream either way).
    detects_by_partition = False
    # Its events carry the job's creation time (see the module's docstring).
    enqueued_times = False

    def __init__(self, paths: Sequence[Path], enqueued: datetime, parts: int = 1) -> None:
        """``parts``: plan the files as about this many parts of about equal bytes (whole
        files, or a big file in parts by app), to be read beside each other."""
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
        apps = AppLines(frozenset(plan.app_buckets)) if plan.app_buckets else None
        batch: list[ReceivedEvent] = []
        for offset, block in _blocks(Path(partition), after, plan.last):
            pieces = apps.of(block, offset) if apps is not None else block_lines(block, offset)
            for at, piece in pieces:
                if at > after:
                    line = bare_line(piece, at)
                    if line:
                        batch.append(received(line, partition, at, enqueued))
                        if len(batch) >= batch_size:
                            yield batch
                            batch = []
        if batch:
            yield batch

    async def preceding(
        self, plan: PartitionPlan, batch_size: int
    ) -> AsyncGenerator[list[ReceivedEvent]]:
        # A file is no live partition: its events' lateness is its own, counted from its start
        # (a part by app from the lines of its apps).
        return
        yield
