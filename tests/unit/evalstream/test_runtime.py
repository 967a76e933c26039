"""How ``process`` (evalstream/runtime.run_processor) stops when processing fails for good: the
rest ends as on a signal (the ingest pool drains), then the one failure is raised."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from evalstream import runtime, wiring
from evalstream.settings import load_settings
from store.exceptions import StoreMisconfigured
from stream.producers.simulator import Simulator
from stream.sources.local_log import LocalLog
from tests.unit.stream.test_processor import GONE, GoneStore


class DrainingPool:
    """Stands for the ingest pool: once ``stop`` is set its workers drain (answer the requests
    they accepted) until ``drain`` is set."""

    def __init__(self) -> None:
        self.drain = asyncio.Event()
        self.drained = False
        self.cancelled = False

    async def run(self, stop: asyncio.Event) -> None:
        await stop.wait()
        try:
            await self.drain.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        self.drained = True


async def test_a_processing_failure_lets_the_ingest_pool_drain_then_is_raised_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path})
    simulator = Simulator(apps=2, rate=10.0, seed=3, start=datetime(2026, 12, 1, tzinfo=UTC))
    log = LocalLog(settings.embedded.log_path, settings.embedded.partitions)
    try:
        log.append([(event.app_id, event.body) for event in simulator.events(20)])
    finally:
        log.close()
    pool = DrainingPool()

    @contextlib.asynccontextmanager
    async def ingest_in_workers(*_: Any) -> AsyncIterator[DrainingPool]:
        yield pool

    monkeypatch.setattr(wiring, "store", lambda s: GoneStore(s.embedded.store_path))
    monkeypatch.setattr(runtime, "ingest_in_workers", ingest_in_workers)
    stopped = asyncio.Event()

    def on_status(line: str) -> None:
        if line.startswith("stopped: "):
            stopped.set()  # the processor ended; its failure is raised next

    running = asyncio.create_task(
        runtime.run_processor(
            settings,
            ingest=True,
            ingest_port=0,
            simulate=None,
            until_idle_s=None,
            on_status=on_status,
            ingest_workers=1,
        )
    )
    async with asyncio.timeout(30):
        await stopped.wait()
    assert not running.done()  # waiting for the pool's workers to drain
    pool.drain.set()
    await asyncio.wait([running])
    assert pool.drained and not pool.cancelled
    # The failure itself, not a group of the tasks it cut short: one line at the command line.
    with pytest.raises(StoreMisconfigured, match=GONE):
        running.result()
