"""The inline executor: a manifest's shards one after another in this process.

For light policies and the processor's in-process demo schedule, where starting a process per
shard would cost more than the evaluation. Same shard task, same idempotence as the others.
"""

from __future__ import annotations

import asyncio
import logging

from coldpath.ports import JobReport
from coldpath.runner import ShardRunner
from schemas import JobManifest

logger = logging.getLogger(__name__)


class InlineExecutor:
    """Runs every shard with ``runner``; a failing shard is reported, the others still run."""

    def __init__(self, runner: ShardRunner) -> None:
        self.runner = runner

    async def run(self, manifest: JobManifest) -> JobReport:
        succeeded, failed = [], {}
        for index in range(manifest.shard_count):
            try:
                await self.runner.run_shard(manifest, index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # supervision boundary: one shard's failure is reported
                logger.exception("shard %d of manifest %s failed", index, manifest.id)
                failed[index] = repr(exc)
            else:
                succeeded.append(index)
        return JobReport(manifest.id, manifest.shard_count, tuple(succeeded), failed)
