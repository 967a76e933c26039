"""How many ingest worker processes the processor starts."""

from __future__ import annotations

import os

from evalstream.ingest_pool import worker_count


def test_ingest_workers_are_as_configured_else_half_the_usable_cores() -> None:
    assert worker_count(0) == 0
    assert worker_count(3) == 3
    assert worker_count(None) == max(1, len(os.sched_getaffinity(0)) // 2)
