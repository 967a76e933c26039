"""The local executor: a manifest's shards as child processes over every core.

Each shard runs as its own process (``evalstream coldpath run-shard``, the same task Azure
Batch runs), at most ``workers`` at a time. A shard that exits non-zero (or is killed) is
retried with the common backoff up to ``retries`` times, then reported with the end of its
error output. An attempt that runs longer than ``timeout_s`` is killed and counts as a
failure. Killing the executor at any point is safe: shard tasks are idempotent and skip units
already done.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from coldpath.exceptions import ShardFailed
from coldpath.ports import JobReport
from common.children import signal_child
from common.retry import Backoff, retry
from schemas import JobManifest

logger = logging.getLogger(__name__)

ShardCommand = Callable[[str, int], Sequence[str]]
ERROR_TAIL_CHARS = 2000


@dataclass
class _Counters:
    shards_done: int = 0
    shards_failed: int = 0
    units_done: int = 0
    started: float = field(default_factory=time.monotonic)

    def units_per_s(self) -> float:
        return self.units_done / max(time.monotonic() - self.started, 1e-9)


class LocalExecutor:
    """Runs shards as processes from ``command(manifest_id, group_index)``.

    ``workers`` bounds concurrent shards (default: every core); ``backoff`` paces retries of a
    failed shard and its ``max_retries`` bounds them; ``timeout_s`` bounds one attempt (None:
    no bound). ``console`` shows a progress bar (shards
    done/failed, units/s, ETA) when it is a terminal.
    """

    def __init__(
        self,
        command: ShardCommand,
        *,
        workers: int | None = None,
        backoff: Backoff | None = None,
        timeout_s: float | None = None,
        console: Console | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.workers = workers or os.cpu_count() or 1
        self.backoff = backoff or Backoff(initial_s=0.5, max_s=10.0, max_retries=3)
        self.timeout_s = timeout_s
        self.console = console
        self.env = env

    async def run(self, manifest: JobManifest) -> JobReport:
        shards = manifest.shard_count
        counters = _Counters()
        slots = asyncio.Semaphore(self.workers)
        succeeded: list[int] = []
        failed: dict[int, str] = {}
        show = self.console is not None and self.console.is_terminal
        with Progress(
            TextColumn(f"[bold]{manifest.window.key}[/bold]"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} shards"),
            TextColumn("{task.fields[failed]} failed"),
            TextColumn("{task.fields[rate]:.1f} units/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not show,
            transient=False,
        ) as progress:
            task = progress.add_task("shards", total=shards, failed=0, rate=0.0)

            async def one(index: int) -> None:
                async with slots:
                    try:
                        await retry(
                            lambda: self._attempt(manifest.id, index),
                            backoff=self.backoff,
                            what=f"shard {index} of manifest {manifest.id}",
                            retryable=lambda exc: isinstance(exc, ShardFailed),
                            log_fields={"manifest_id": manifest.id, "group_index": index},
                        )
                    except ShardFailed as exc:
                        failed[index] = str(exc)
                        counters.shards_failed += 1
                    else:
                        succeeded.append(index)
                        counters.shards_done += 1
                        counters.units_done += len(manifest.shard(index))
                self._update(progress, task, counters)

            async with asyncio.TaskGroup() as group:
                for index in range(shards):
                    group.create_task(one(index))
        return JobReport(manifest.id, shards, tuple(sorted(succeeded)), failed)

    @staticmethod
    def _update(progress: Progress, task: TaskID, counters: _Counters) -> None:
        progress.update(
            task,
            completed=counters.shards_done + counters.shards_failed,
            failed=counters.shards_failed,
            rate=counters.units_per_s(),
        )

    async def _attempt(self, manifest_id: str, index: int) -> None:
        argv = list(self.command(manifest_id, index))
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=self.env,
        )
        try:
            async with asyncio.timeout(self.timeout_s):
                _, stderr = await process.communicate()
        except TimeoutError:
            signal_child(process)
            await process.wait()
            raise ShardFailed(
                index, f"still running after {self.timeout_s:g} s (coldpath.shard_timeout): killed"
            ) from None
        except BaseException:
            # Cancelled (the trigger is stopping): do not leave the shard running unwatched.
            if process.returncode is None:
                signal_child(process)
                await asyncio.shield(process.wait())
            raise
        if process.returncode != 0:
            tail = stderr.decode(errors="replace")[-ERROR_TAIL_CHARS:].strip()
            raise ShardFailed(index, f"exit code {process.returncode}: {tail or 'no output'}")
