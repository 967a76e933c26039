"""Errors of the cold path, under the one error root.

ColdpathError
├── PolicyConfigError     a policy setting is wrong (names the setting; refused at start;
│                         also Misconfigured)
├── ManifestNotFound      a shard task was given a manifest id or path that does not exist
└── ShardFailed           a shard task failed after its retries (carries the last error)
"""

from __future__ import annotations

from common.errors import EvalstreamError, Misconfigured


class ColdpathError(EvalstreamError):
    """Root of the cold path's errors."""


class PolicyConfigError(ColdpathError, Misconfigured):
    """A policy setting is invalid; the message starts with the setting's path. Also raised
    by a shard given a manifest (a file, or one staged under other settings) whose policies
    the catalogue cannot evaluate as written: the command exits 2 like any bad setting."""


class ManifestNotFound(ColdpathError):
    """No manifest with this id is staged, and no file at this path."""


class ShardFailed(ColdpathError):
    """A shard failed for good; ``group_index`` says which and the message says why."""

    def __init__(self, group_index: int, message: str) -> None:
        super().__init__(f"shard {group_index}: {message}")
        self.group_index = group_index
