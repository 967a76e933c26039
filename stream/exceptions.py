"""Errors of the stream package, below the project's one error root.

EvalstreamError (common.errors)
└── StreamError            sources, decoding, processing
    ├── SourceError        an event source cannot be opened or used as configured; retryable
    │   │                  only when the cause says so (e.g. a SQLite file locked for now)
    │   ├── SourceUnavailable  the source's service cannot be reached or is busy (retryable)
    │   └── PartitionLost  another processor owns the partition now: this one must not write
    │                      its snapshot or checkpoint (they could move the new owner's back)
    ├── NotUtf8            an NDJSON stream in UTF-16 or UTF-32 (lines split on bytes would
    │                      cut its characters; it is refused whole)
    ├── SnapshotError      a detector snapshot cannot be restored (stream.hotpath.errors)
    └── ReplayError        a replay cannot start or resume as asked (one line for the CLI)
        └── ReplayMisconfigured  its options contradict each other or the job (exit 2)
"""

from __future__ import annotations

from common.errors import EvalstreamError, Misconfigured


class StreamError(EvalstreamError):
    """Root of the stream package's errors; not retryable unless a subclass or cause says so."""


class SourceError(StreamError):
    pass


class SourceMisconfigured(SourceError, Misconfigured):
    pass


class SourceUnavailable(SourceError):
    retryable = True


class PartitionLost(SourceError):
    pass


class NotUtf8(StreamError):
    pass


class ReplayError(StreamError):
    pass


class ReplayMisconfigured(ReplayError, Misconfigured):
    pass
