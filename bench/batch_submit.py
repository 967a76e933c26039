"""Batch submission and shard-task start-up cost: ``python -m bench.batch_submit``.

1. A window of 10,000 shards submitted by the Batch executor to the local Batch test server (a
   pool with no nodes, so nothing runs): add-task-collection calls made and seconds.
2. The start-up of a shard task: ``evalstream coldpath run-shard --help`` (interpreter plus every
   import the command needs before it reads its first document) beside ``python -c pass``.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from azure.batch import models
from pydantic import SecretStr

from coldpath.executors.batch import BatchExecutor, batch_client
from coldpath.executors.batch_config import BatchSettings, PoolSettings
from coldpath.shards import build_manifest
from schemas import EvaluationPolicy, JobManifest, Window
from tests.emulators.batch import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME
from tests.emulators.batch_fixtures import start_batch

RESULTS = Path(__file__).parent / "results" / "batch_submit.md"
SHARDS = 10_000
RUNS = 7


async def submit(url: str, manifest: JobManifest) -> tuple[float, int, int]:
    settings = BatchSettings(
        account_url=url,
        account_name=DEFAULT_ACCOUNT_NAME,
        account_key=SecretStr(DEFAULT_ACCOUNT_KEY),
        pool=PoolSettings(id="bench-empty"),
    )

    async def stage(_: JobManifest) -> str:
        # A SAS URL of realistic length (the task command lines carry it).
        return "https://account.blob.core.windows.net/coldpath-manifests/" + (
            f"{manifest.id}.json?se=2026-12-31T00%3A00%3A00Z&sp=r&sv=2026-10-06&sr=b&sig="
            + "x" * 44
        )

    executor = BatchExecutor(settings, stage=stage, follow=False)
    async with batch_client(settings) as client:
        await client.create_pool(
            models.BatchPoolCreateOptions(
                id="bench-empty", vm_size="standard_d2s_v3", target_dedicated_nodes=0
            )
        )
    started = time.perf_counter()
    await executor.run(manifest)
    seconds = time.perf_counter() - started
    return seconds, executor.last_submit.calls, executor.last_submit.tasks_added


def startup(commands: dict[str, list[str]]) -> dict[str, list[float]]:
    """Seconds per run of each command, the commands interleaved round by round."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(RUNS):
        for label, argv in commands.items():
            started = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            times[label].append(time.perf_counter() - started)
    return times


def main() -> None:
    window = Window(start=datetime(2026, 3, 1, tzinfo=UTC), end=datetime(2026, 3, 1, 1, tzinfo=UTC))
    policy = EvaluationPolicy.model_validate({"name": "q", "metrics": [{"metric": "latency"}]})
    apps = [f"app-{n:05d}" for n in range(SHARDS)]
    manifest = build_manifest(window, [policy], apps, group_size=1, code_version="bench")
    assert manifest.shard_count == SHARDS
    with tempfile.TemporaryDirectory() as tmp:
        server = start_batch(Path(tmp) / "nodes", Path(tmp))
        try:
            url = f"http://127.0.0.1:{server.port}"
            seconds, calls, added = asyncio.run(submit(url, manifest))
        finally:
            server.stop()
    lines = [
        f"run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"submit {SHARDS} shards: {added} tasks added in {calls} calls, {seconds:.2f} s",
    ]
    python = [sys.executable]
    commands = dict(
        (
            ("python -c pass", [*python, "-c", "pass"]),
            ("run-shard --help", [*python, "-m", "evalstream", "coldpath", "run-shard", "--help"]),
            (
                "imports of the run-shard command's module",
                [*python, "-c", "import evalstream.cli.coldpath"],
            ),
            (
                # What every command paid before the root command imported modules lazily.
                "imports of every command's module",
                [
                    *python,
                    "-c",
                    "import evalstream.cli.process, evalstream.cli.store, evalstream.cli.alerts, "
                    "evalstream.cli.coldpath, evalstream.cli.evaluations, evalstream.cli.report",
                ],
            ),
            (
                "imports of run-shard + azure adapters",
                [
                    *python,
                    "-c",
                    "import evalstream.cli.coldpath, store.cosmos_evaluations, store.cosmos, "
                    "alerts.servicebus, coldpath.executors.blob_staging",
                ],
            ),
        )
    )
    lines.append(
        "load average before the start-up runs: "
        + " ".join(f"{value:.2f}" for value in os.getloadavg())
    )
    for label, times in startup(commands).items():
        lines.append(
            f"{label}: median {statistics.median(times):.3f} s, min {min(times):.3f} s "
            f"({', '.join(f'{t:.3f}' for t in times)})"
        )
    RESULTS.write_text(
        "# bench.batch_submit\n\n`python -m bench.batch_submit`; start-up commands interleaved, "
        f"{RUNS} rounds.\n\n```\n" + "\n".join(lines) + "\n```\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
