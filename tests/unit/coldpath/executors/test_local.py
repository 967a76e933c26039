"""The local executor's bound on one shard attempt: a hung shard is killed, retried, reported."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from coldpath.executors.local import LocalExecutor
from coldpath.shards import build_manifest
from common.retry import Backoff
from schemas import EvaluationPolicy, JobManifest, MetricSpec, Window

QUICK = Backoff(initial_s=0.01, max_s=0.02, max_retries=1)
TIMEOUT_S = 2.0


def two_shards() -> JobManifest:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    window = Window(start=start, end=start + timedelta(hours=1))
    policy = EvaluationPolicy(
        name="p", version=1, window=timedelta(hours=1), metrics=(MetricSpec(metric="latency"),)
    )
    return build_manifest(window, [policy], ["a", "b"], group_size=1, code_version="test")


def hangs_first(tmp_path: Path, *, always: bool) -> LocalExecutor:
    """Shard 0 records its pid and hangs (every attempt, or only the first); shard 1 exits 0."""
    pids = tmp_path / "pids"

    def command(_: str, index: int) -> Sequence[str]:
        if index == 1:
            return ["sh", "-c", "exit 0"]
        once = "" if always else f"[ -s {pids} ] && echo $$ >> {pids} && exit 0; "
        return ["sh", "-c", f"{once}echo $$ >> {pids}; exec sleep 600"]

    return LocalExecutor(command, workers=2, backoff=QUICK, timeout_s=TIMEOUT_S)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_shard_that_never_ends_is_killed_retried_and_reported(tmp_path: Path) -> None:
    report = await hangs_first(tmp_path, always=True).run(two_shards())

    assert report.succeeded == (1,)
    assert report.failed == {0: "shard 0: still running after 2 s (coldpath.shard_timeout): killed"}
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2  # the first attempt and its one retry
    assert not any(alive(pid) for pid in pids)


async def test_a_shard_that_hangs_once_succeeds_on_its_retry(tmp_path: Path) -> None:
    report = await hangs_first(tmp_path, always=False).run(two_shards())

    assert report.succeeded == (0, 1)
    assert report.failed == {}
    pids = [int(line) for line in (tmp_path / "pids").read_text().split()]
    assert len(pids) == 2
    assert not alive(pids[0])
