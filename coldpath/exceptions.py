"""Errors of the cold path, under the one error root.

ColdpathError
├── PolicyConfigError     a policy setting is wrong (names the setting; refused at start)
├── ManifestNotFound      a shard task was given a manifest id or path that does not exist
└── ShardFailed           a shard task failed after its retries (carries the last error)
"""

from __future__ import annotations

from common.errors import EvalstreamError


class ColdpathError(EvalstreamError):
    """Root of the cold path's errors."""


class PolicyConfigError(ColdpathError):
    """A policy setting is invalid; the message starts with the setting's path."""


class ManifestNotFound(ColdpathError):
    """No manifest with this id is staged, and no file at this path."""


class ShardFailed(ColdpathError):
    """A shard failed for good; ``group_index`` says which and the message says why."""

    def __init__(self, group_index: int, message: str) -> None:
        super().__init__(f"shard {group_index}: {message}")
        self.group_index = group_index
