"""Children started for a channel: which signals they hold until they have set them up."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from stream.sources.subprocess_channel import start_child

HELD = {signal.SIGINT, signal.SIGUSR1}


def blocked_in(pid: int) -> set[int]:
    """The signals process ``pid``'s main thread blocks (Linux: its SigBlk mask)."""
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("SigBlk:"))
    mask = int(line.split()[1], 16)
    return {number for number in range(1, 65) if mask & (1 << (number - 1))}


async def test_children_start_with_interrupts_held_and_the_parent_keeps_none() -> None:
    # Two at once, as a supervisor starts its workers: their starts interleave.
    children = await asyncio.gather(
        *(start_child(sys.executable, "-c", "import sys; sys.stdin.read()") for _ in range(2))
    )
    try:
        for child in children:
            assert blocked_in(child.pid) >= HELD
        assert not HELD & signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.close()
            await child.wait()
