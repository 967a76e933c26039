"""Children started for a channel: which signals they hold until they have set them up, the
threads their numeric libraries start, and how they are ended."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading

import pytest

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


async def test_a_child_that_exits_as_the_grace_runs_out_keeps_its_exit_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child has exited and asyncio's child watcher (a thread waiting for it) has not yet
    # reaped it when the grace runs out: that moment is held still here by holding the
    # watcher's wait. end_child's kill must not reap the child itself, or the watcher, finding
    # it gone, reports 255.
    real_waitpid, watcher_may_reap = os.waitpid, threading.Event()

    def held_waitpid(pid: int, options: int) -> tuple[int, int]:
        if threading.current_thread() is not threading.main_thread():
            watcher_may_reap.wait(10)
        return real_waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", held_waitpid)
    child = await start_child(sys.executable, "-c", "import sys; sys.exit(5)")
    # Until the child has exited, without reaping it.
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    asyncio.get_running_loop().call_later(0.1, watcher_may_reap.set)
    assert await end_child(child, grace_s=0) == 5


async def test_a_child_that_does_not_exit_is_killed_after_the_grace() -> None:
    child = await start_child(sys.executable, "-c", "import sys; sys.stdin.read()")
    started = asyncio.get_running_loop().time()
    assert await end_child(child, grace_s=0.2) == -signal.SIGKILL
    assert asyncio.get_running_loop().time() - started >= 0.2


# The threads a child has once numpy (and with it OpenBLAS, which starts its pool) is loaded.
THREADS_WITH_NUMPY = "import os, numpy; print(len(os.listdir('/proc/self/task')))"


async def threads_of_a_child_with_numpy() -> int:
    child = await start_child(sys.executable, "-c", THREADS_WITH_NUMPY)
    assert child.stdout is not None and child.stdin is not None
    child.stdin.close()
    output = await child.stdout.read()
    assert await child.wait() == 0
    return int(output)


async def test_a_childs_numeric_libraries_start_no_threads_of_their_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert await threads_of_a_child_with_numpy() == 1


async def test_a_thread_count_the_user_set_for_them_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    # OpenBLAS starts one thread per core at most, the calling thread among them.
    assert await threads_of_a_child_with_numpy() == min(2, os.cpu_count() or 1)
