"""Errors of the hot path."""

from __future__ import annotations

from stream.exceptions import StreamError


class SnapshotError(StreamError):
    """A detector snapshot cannot be restored (corrupt, or written by another format version)."""
