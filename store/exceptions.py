"""Errors of the store adapters, one root for all.

StoreError
├── StoreUnavailable      the backend cannot be reached or is throttling (retryable)
└── StoreConflict         a conditional write lost (not retryable as is)
"""

from __future__ import annotations


class StoreError(Exception):
    retryable: bool = False

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(StoreError):
    retryable = True


class StoreConflict(StoreError):
    pass
