"""Children started for a channel: which signals they hold until they have set them up."""

from __future__ import annotations

import asyncio
import signal
import sys

from stream.sources.subprocess_channel import start_child
from tests.procfs import signal_set

HELD = {signal.SIGINT, signal.SIGUSR1}


async def test_children_start_with_interrupts_held_and_the_parent_keeps_none() -> None:
    # Two at once, as a supervisor starts its workers: their starts interleave.
    children = await asyncio.gather(
        *(start_child(sys.executable, "-c", "import sys; sys.stdin.read()") for _ in range(2))
    )
    try:
        for child in children:
            assert signal_set(child.pid, "SigBlk") >= HELD
        assert not HELD & signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            await child.wait()
