"""Errors of the stream package, one root for all.

StreamError
└── SourceError           an event source cannot be opened or used as configured
    └── SourceUnavailable the source's service cannot be reached or is busy (retryable)
"""

from __future__ import annotations


class StreamError(Exception):
    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceError(StreamError):
    pass


class SourceUnavailable(SourceError):
    retryable = True
