"""The wire between SubprocessSource and its child: length-prefixed pickled messages over a pair
of pipes, with request/reply calls, and how batches and errors cross it.

Both ends are this package (``subprocess_source`` in the parent, ``subprocess_worker`` in the
child), over the child's private stdin and stdout, so unpickling trusts only our own messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import fcntl
import itertools
import logging
import os
import pickle
import signal
import struct
from collections.abc import Coroutine
from datetime import datetime
from typing import Any

from common.children import signal_child
from stream.exceptions import SourceError, SourceUnavailable, StreamError
from stream.ports import ReceivedEvent, received

logger = logging.getLogger(__name__)

# Batches a partition may have sent but not yet processed: one being processed, one waiting.
DEFAULT_WINDOW = 2

# Capacity asked for the child-to-parent pipe (Linux's default pipe-max-size).
PIPE_BYTES = 1 << 20

_LENGTH = struct.Struct("!I")
# (retryable, message, retry_after): errors cross the pipe as values, rebuilt on the other side.
ErrorValue = tuple[bool, str, float | None]
BatchColumns = tuple[list[bytes], list[int], list[datetime], list[str | None]]


# Signals a child of start_child gets only once it has set them up (child_signals).
_HELD_AT_START = {signal.SIGINT, signal.SIGUSR1}

# A child's numeric libraries on one thread. OpenBLAS (numpy's copy, and scipy's that river
# loads) starts a pool of threads as it loads, each spinning ~0.1 s of CPU before it sleeps; a
# child is one core's worth of work, started one per core beside its siblings, so those threads
# only took CPU from them (2 workers on 2 cores: 4 threads spinning as processing started; the
# scaling went from 1.71x to 1.97x, bench/NOTES.md). A value the user set is kept.
CHILD_ENVIRONMENT = {"OPENBLAS_NUM_THREADS": "1"}


def child_environment() -> dict[str, str]:
    """The environment a child is started with: this process's, with CHILD_ENVIRONMENT's
    defaults for what it does not set."""
    return {**CHILD_ENVIRONMENT, **os.environ}


def encode_error(exc: BaseException) -> ErrorValue:
    retryable = bool(getattr(exc, "retryable", False))
    retry_after = getattr(exc, "retry_after", None)
    message = str(exc) if isinstance(exc, StreamError) else f"{type(exc).__name__}: {exc}"
    return retryable, message, retry_after if isinstance(retry_after, (int, float)) else None


def decode_error(error: ErrorValue) -> SourceError:
    retryable, message, retry_after = error
    kind = SourceUnavailable if retryable else SourceError
    return kind(message, retry_after=retry_after)


def encode_batch(events: list[ReceivedEvent]) -> BatchColumns:
    # Columns pickle about twenty times faster than a list of dataclasses; the enqueued times
    # are shared objects (events enqueued together), which pickle stores once.
    return (
        [event.body for event in events],
        [event.sequence for event in events],
        [event.enqueued_time for event in events],
        [event.offset for event in events],
    )


def decode_batch(partition_id: str, batch: BatchColumns) -> list[ReceivedEvent]:
    bodies, sequences, times, offsets = batch
    return [
        received(body, partition_id, sequence, when, offset)
        for body, sequence, when, offset in zip(bodies, sequences, times, offsets, strict=True)
    ]


class Channel:
    """Length-prefixed pickled messages over a pair of pipes, with request/reply calls."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count()
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.broken = False

    def send(self, *message: Any) -> None:
        if self.broken or self._writer.is_closing():
            raise SourceUnavailable("the receiver process pipe is closed")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_LENGTH.pack(len(data)))
        self._writer.write(data)

    async def flush(self) -> None:
        try:
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            self.broken = True
            raise SourceUnavailable(f"the receiver process pipe is closed: {exc}") from exc

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message; None once the other side has closed its end."""
        try:
            header = await self._reader.readexactly(_LENGTH.size)
            data = await self._reader.readexactly(_LENGTH.unpack(header)[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        # Only this module writes to this pipe (see the module docstring).
        message: tuple[Any, ...] = pickle.loads(data)  # noqa: S301
        return message

    async def call(self, name: str, *args: Any) -> Any:
        """Ask the other side to run ``name(*args)``; its error is raised here as SourceError."""
        call_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = future
        try:
            self.send("call", call_id, name, args)
            await self.flush()
            return await future
        finally:
            self._calls.pop(call_id, None)

    def resolve(self, call_id: int, error: ErrorValue | None, value: Any) -> None:
        future = self._calls.get(call_id)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(decode_error(error))

    def answer(self, call_id: int, work: Coroutine[Any, Any, Any]) -> None:
        """Run a call of the other side in its own task and send back its result or error."""

        async def run() -> None:
            try:
                value, error = await work, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                value, error = None, encode_error(exc)
            if not self.broken:
                try:
                    self.send("reply", call_id, error, value)
                    await self.flush()
                except SourceUnavailable:
                    logger.debug("reply not sent: the pipe is closed", extra={"call": call_id})

        task = asyncio.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def fail_calls(self) -> None:
        """The other side is gone: every call waiting for a reply fails now."""
        self.broken = True
        for future in self._calls.values():
            if not future.done():
                future.set_exception(SourceUnavailable("the receiver process is gone"))

    async def close(self, *, cancel_answers: bool) -> None:
        """Fail the calls still waiting, then finish (or cancel) the answers still running."""
        self.fail_calls()
        tasks = list(self._tasks)
        if cancel_answers:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._writer.close()


async def unknown_call(name: str) -> None:
    raise SourceError(f"the receiver process asked for an unknown call {name!r}")


async def start_child(*argv: str, pass_fds: tuple[int, ...] = ()) -> asyncio.subprocess.Process:
    """``argv`` as a child process with a channel on its stdin and stdout (``take_stdio``).

    Started with SIGINT and SIGUSR1 blocked (the mask survives exec) until the child has set
    them up (``child_signals``): a Ctrl-C in the terminal reaches the whole process group, and
    the command that started the child handles it (it tells its children to stop); one that
    came while a child was still importing killed it with a KeyboardInterrupt (a replay ended
    "worker exited with code -2"). SIGUSR1, sent to see every process's stacks, ended a child
    still starting."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_AT_START)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            pass_fds=pass_fds,
            env=child_environment(),
        )
    finally:
        # Unblocked, not set back to the mask found: two children started at once interleave
        # here (the fork happens before the first await), and the second one's "mask found"
        # was the first one's blocked mask, which then stayed on this thread.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_AT_START)


# How long a child whose pipe closed gets to exit by itself before it is killed.
CHILD_EXIT_GRACE_S = 1.0


async def end_child(
    process: asyncio.subprocess.Process, grace_s: float = CHILD_EXIT_GRACE_S
) -> int:
    """The exit code of a child that is ending (its pipe closed, or its parent gives up on it),
    killed if it has not exited within ``grace_s``.

    Killed only after that wait, and without reaping it (``common.children.signal_child``): a
    worker killed with SIGKILL was reported as "exited with code 255" when its parent, finding
    the pipe closed, killed it to be sure; a child exiting just as the grace ran out could be
    too."""
    try:
        return await asyncio.wait_for(asyncio.shield(process.wait()), grace_s)
    except TimeoutError:
        signal_child(process, signal.SIGKILL)
        return await asyncio.shield(process.wait())


def child_signals() -> None:
    """In a child of ``start_child``: SIGINT ignored (a pending one dropped), SIGUSR1 prints
    every thread's stack (as in the command, evalstream.runtime), and a pending one now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD_AT_START)


def take_stdio() -> tuple[int, int]:
    """In a child process: private copies of stdin and stdout for the channel (read, write),
    with fd 0 and 1 pointed elsewhere, so a library that prints cannot corrupt a message."""
    read_fd, write_fd = os.dup(0), os.dup(1)
    with contextlib.suppress(OSError):
        # A batch of 1,000 events is about 1.2 MB: let the pipe hold one (the default 64 KiB
        # makes the sender wait for the parent after every 64 KiB). Capped by the system's
        # pipe-max-size; a refusal only costs speed.
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return read_fd, write_fd


async def open_pipes(read_fd: int, write_fd: int) -> Channel:
    """The child's Channel over the descriptors ``take_stdio`` kept."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return Channel(reader, writer)
