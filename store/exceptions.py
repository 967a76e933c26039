"""Errors of the store adapters, under the one error root (``common.errors``).

StoreError
├── StoreUnavailable      the backend cannot be reached, is throttling or busy (retryable)
└── StoreConflict         a conditional write lost (not retryable as is)
"""

from __future__ import annotations

from common.errors import EvalstreamError, Misconfigured


class StoreError(EvalstreamError):
    """Root of the store's errors."""


class StoreMisconfigured(StoreError, Misconfigured):
    pass


class StoreUnavailable(StoreError):
    """A passing condition: Cosmos DB throttling or unreachable, a SQLite file locked by
    another process or a full disk. ``retry_after`` is the wait the server asked for, if any."""

    retryable = True


class StoreConflict(StoreError):
    """A conditional write lost, or the id exists already."""
