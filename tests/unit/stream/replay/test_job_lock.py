"""The lock of a replay job: a second run of a running job is refused as an operator's error."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import Misconfigured
from common.lock_file import try_lock
from stream.replay.job import running


async def test_a_job_running_elsewhere_is_refused_as_misconfigured(tmp_path: Path) -> None:
    path = tmp_path / "job.lock"
    held = try_lock(path)
    assert held is not None
    try:
        # Misconfigured: the CLI ends with exit 2 (a refused start), not 1 (a failed job).
        with pytest.raises(Misconfigured, match="replay job j is running in another process"):
            async with running(path, "j", wait_s=0):
                pass
    finally:
        held.close()
