"""Children started for a channel: which signals they hold until they have set them up, and
how they are ended."""

from __future__ import annotations

import asyncio
import signal
import sys

from stream.sources.subprocess_channel import end_child, start_child
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


async def test_a_child_whose_pipe_closed_ends_with_its_own_exit_code() -> None:
    # Its pipe closes a moment before it exits, as a dying worker's does: it is not killed.
    code = "import os, sys, time; os.close(1); time.sleep(0.3); sys.exit(3)"
    child = await start_child(sys.executable, "-c", code)
    assert child.stdout is not None
    assert await child.stdout.read() == b""
    assert await end_child(child, grace_s=10) == 3


async def test_a_child_that_does_not_exit_is_killed_after_the_grace() -> None:
    child = await start_child(sys.executable, "-c", "import sys; sys.stdin.read()")
    started = asyncio.get_running_loop().time()
    assert await end_child(child, grace_s=0.2) == -signal.SIGKILL
    assert asyncio.get_running_loop().time() - started >= 0.2
