"""Errors of the stream package, one root for all.

StreamError
└── SourceError       an event source cannot be opened or used as configured
"""

from __future__ import annotations


class StreamError(Exception):
    retryable: bool = False


class SourceError(StreamError):
    pass
