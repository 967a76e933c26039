"""Both ends of a worker process that a command starts (``process --workers``, ``replay
--workers``): how the command starts it, how it starts, how it reports its end.

The worker is ``python -m <module>``; its private stdin and stdout carry the messages
(``stream.sources.subprocess_channel``). The first message is ``("start", log level, log
format, *arguments)``, the last one the worker sends ``("finished", error, *outcome)``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from evalstream import logs
from stream.exceptions import SourceUnavailable
from stream.sources.subprocess_channel import (
    Channel,
    child_signals,
    encode_error,
    open_pipes,
    start_child,
    take_stdio,
)


async def start_worker(
    module: str, *arguments: object, pass_fds: Sequence[int] = ()
) -> tuple[asyncio.subprocess.Process, Channel]:
    """Start ``python -m module`` and send it ``arguments`` with this process's logging set-up;
    ``pass_fds``: descriptors it inherits."""
    process = await start_child(sys.executable, "-m", module, pass_fds=tuple(pass_fds))
    assert process.stdout is not None and process.stdin is not None
    channel = Channel(process.stdout, process.stdin)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    channel.send("start", level, logs.chosen_format(), *arguments)
    return process, channel


async def started(
    read_fd: int, write_fd: int
) -> tuple[Channel, tuple[Any, ...], asyncio.Event] | None:
    """In the worker: its channel, the arguments its command sent, and an event set on
    SIGTERM; logging set up as the command's. None when the command sent no start."""
    channel = await open_pipes(read_fd, write_fd)
    start = await channel.receive()
    if start is None or start[0] != "start":
        return None
    _, level, log_format, *arguments = start
    logs.configure(level, log_format)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return channel, tuple(arguments), stop


async def listen(
    channel: Channel, stop: asyncio.Event, handle: Callable[[tuple[Any, ...]], None] | None = None
) -> None:
    """In the worker, until its command is gone: ``stop`` on "stop", other messages to
    ``handle``. Then ``stop`` too: the worker finishes what is in flight, checkpoints, exits."""
    while (message := await channel.receive()) is not None:
        if message[0] == "stop":
            stop.set()
        elif handle is not None:
            handle(message)
    stop.set()


async def finished(
    channel: Channel,
    error: BaseException | None,
    *outcome: object,
    unsent: logging.Logger | None = None,
) -> int:
    """Tell the command how the work ended; the worker's exit code. ``unsent``: where to log
    ``error`` if the command is gone before hearing of it (a worker that leaves the logging of
    its failures to its command)."""
    try:
        channel.send("finished", None if error is None else encode_error(error), *outcome)
        await channel.flush()
    except SourceUnavailable:
        if unsent is not None and error is not None:
            unsent.error("worker failed (its command is gone)", exc_info=error)
        return 1
    await channel.close(cancel_answers=True)
    return 0 if error is None else 1


def run_worker(work: Callable[[int, int], Coroutine[Any, Any, int]]) -> None:
    """A worker's ``main``: ``work(read_fd, write_fd)`` over the private pipes, exit with its
    code. Interrupts from the terminal are the command's to handle (it tells the workers to
    stop); SIGUSR1 prints every thread's stack, as in the command (evalstream.runtime)."""
    read_fd, write_fd = take_stdio()
    child_signals()
    sys.exit(asyncio.run(work(read_fd, write_fd)))
