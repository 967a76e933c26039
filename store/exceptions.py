"""Errors of the store adapters, under the one error root (``common.errors``).

StoreError
├── StoreMisconfigured    the store is set up wrongly (also a ``common.errors.Misconfigured``)
│   └── ContainerNotFound a container (or its database) is not there: not "no such item"
├── StoreUnavailable      the backend cannot be reached, is throttling or busy (retryable)
└── StoreConflict         a conditional write lost (not retryable as is)
"""

from __future__ import annotations

from common.errors import EvalstreamError, Misconfigured


class StoreError(EvalstreamError):
    """Root of the store's errors."""


class StoreMisconfigured(StoreError, Misconfigured):
    pass


class ContainerNotFound(StoreMisconfigured):
    """A container or its database does not exist, e.g. deleted while the service ran. Not the
    same as a missing item: reading "nothing" from a container that is gone would pass for
    "no snapshot" or "not done yet"."""


class StoreUnavailable(StoreError):
    """A passing condition: Cosmos DB throttling or unreachable, a SQLite file locked by
    another process or a full disk. ``retry_after`` is the wait the server asked for, if any."""

    retryable = True


class StoreConflict(StoreError):
    """A conditional write lost, or the id exists already."""
