"""Ports of the cold path: what runs a manifest's shards.

The local executor (``coldpath.executors.local``) runs them in processes on this machine; an
Azure Batch executor (a later issue) submits one task per shard. Both run the same shard task
(``evalstream coldpath run-shard``), so results do not depend on where they were computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas import JobManifest


@dataclass(frozen=True)
class JobReport:
    """How a manifest's shards ended: which succeeded and which failed, with their errors."""

    manifest_id: str
    shards: int
    succeeded: Sequence[int] = ()
    failed: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


class Executor(Protocol):
    async def run(self, manifest: JobManifest) -> JobReport:
        """Run every shard of a staged manifest to completion (retrying failed ones within the
        executor's limit) and report. Never raises for a failed shard: the report says so."""
        ...
