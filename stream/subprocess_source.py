"""Run an event source in a child process while its handler runs in this one.

The Event Hubs SDK receives over a pure-Python AMQP stack that costs about as much CPU per event
as the pipeline does: in one process the two take turns on one core. SubprocessSource builds the
source in a child process (from a picklable factory) and drives the handler here, so receiving
and processing overlap on two cores. The port's promises hold across the boundary:

- a partition is initialised here before the child delivers its first batch;
- per partition, batches reach the handler in order; a failed batch is retried in place and
  later batches wait behind it;
- checkpoints are written by the child's source when the handler here asks for them, so they
  still follow the durable writes;
- a partition closes here, after its batches in flight, before the child's source releases it;
- the child sends at most ``window`` batches per partition ahead of the handler (backpressure).

If the child dies, its partitions close here as lost (no checkpoint) and a new child starts after
a pause; an error the child's source reports as not retryable (configuration) ends the run.
Messages are pickled: both ends are this module, over the child's private stdin and stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any

from stream.exceptions import SourceError, SourceUnavailable, StreamError
from stream.ports import BatchHandler, CloseReason, EventSource, PartitionContext, ReceivedEvent
from stream.retry import deliver, wait_or_stop

logger = logging.getLogger(__name__)

# Batches a partition may have sent but not yet processed: one being processed, one waiting.
DEFAULT_WINDOW = 2
# Pauses before starting a new child after one died.
RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0)
# Children in a row that fail before initialising any partition, before the run gives up.
MAX_FAILED_STARTS = 5
# How long a child whose parent is gone may take to cancel its source before it exits anyway.
ORPHAN_EXIT_S = 5.0

# Capacity asked for the child-to-parent pipe (Linux's default pipe-max-size).
PIPE_BYTES = 1 << 20
_LENGTH = struct.Struct("!I")
# The PartitionContext methods the parent may call on the child's contexts.
_CONTEXT_CALLS = frozenset({"checkpoint", "last_enqueued_sequence", "checkpointed_sequence"})
# (retryable, message, retry_after): errors cross the pipe as values, rebuilt on the other side.
_Error = tuple[bool, str, float | None]
_Batch = tuple[list[bytes], list[int], list[datetime], list[str | None]]


def _encode_error(exc: BaseException) -> _Error:
    retryable = bool(getattr(exc, "retryable", False))
    retry_after = getattr(exc, "retry_after", None)
    message = str(exc) if isinstance(exc, StreamError) else f"{type(exc).__name__}: {exc}"
    return retryable, message, retry_after if isinstance(retry_after, (int, float)) else None


def _decode_error(error: _Error) -> SourceError:
    retryable, message, retry_after = error
    kind = SourceUnavailable if retryable else SourceError
    return kind(message, retry_after=retry_after)


def _encode_batch(events: list[ReceivedEvent]) -> _Batch:
    # Columns pickle about twenty times faster than a list of dataclasses; the enqueued times
    # are shared objects (events enqueued together), which pickle stores once.
    return (
        [event.body for event in events],
        [event.sequence for event in events],
        [event.enqueued_time for event in events],
        [event.offset for event in events],
    )


def _decode_batch(partition_id: str, batch: _Batch) -> list[ReceivedEvent]:
    bodies, sequences, times, offsets = batch
    return [
        ReceivedEvent(body, partition_id, sequence, when, offset)
        for body, sequence, when, offset in zip(bodies, sequences, times, offsets, strict=True)
    ]


class _Channel:
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

    def resolve(self, call_id: int, error: _Error | None, value: Any) -> None:
        future = self._calls.get(call_id)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(_decode_error(error))

    def answer(self, call_id: int, work: Coroutine[Any, Any, Any]) -> None:
        """Run a call of the other side in its own task and send back its result or error."""

        async def run() -> None:
            try:
                value, error = await work, None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                value, error = None, _encode_error(exc)
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


class _RemotePartition:
    """The PartitionContext handed to the handler here; its calls run in the child's source."""

    def __init__(self, partition_id: str, channel: _Channel) -> None:
        self._partition_id = partition_id
        self._channel = channel
        self.queue: asyncio.Queue[list[ReceivedEvent] | None] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        # closing: stop retrying and drop queued batches (ownership lost); abandoned: a batch
        # failed until the stop, so later ones are not delivered; closed: the handler's close ran.
        self.closing = False
        self.abandoned = False
        self.closed = False

    @property
    def partition_id(self) -> str:
        return self._partition_id

    async def checkpoint(self, event: ReceivedEvent) -> None:
        if self.closed:
            raise SourceError(f"partition {self._partition_id} is closed: checkpoint not written")
        # The child's source needs the position only, not the body.
        position = ReceivedEvent(
            b"", event.partition, event.sequence, event.enqueued_time, event.offset
        )
        await self._channel.call("checkpoint", self._partition_id, position)

    async def last_enqueued_sequence(self) -> int | None:
        try:
            value: int | None = await self._channel.call(
                "last_enqueued_sequence", self._partition_id
            )
        except SourceError as exc:
            # Lag is reporting only: a receiver in trouble must not stop processing.
            logger.debug("last enqueued sequence unavailable", extra={"error": str(exc)})
            return None
        return value

    async def checkpointed_sequence(self) -> int | None:
        value: int | None = await self._channel.call("checkpointed_sequence", self._partition_id)
        return value


class _ParentSession:
    """One child process: its partitions here, their workers, and the messages between."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        handler: BatchHandler,
        stop: asyncio.Event,
    ) -> None:
        assert process.stdout is not None and process.stdin is not None
        self.process = process
        self.handler = handler
        self.stop = stop
        self.channel = _Channel(process.stdout, process.stdin)
        self.partitions: dict[str, _RemotePartition] = {}
        # Set on stop, or when the child is gone: ends the pauses between retries of a batch.
        self.interrupt = asyncio.Event()
        # Set by the child's last message: its source returned (with this error, if any).
        self.finished = False
        self.error: _Error | None = None
        self.initialized = 0
        self.exit_code: int | None = None

    async def run(
        self, factory: Callable[[], EventSource], setup: Callable[[], None] | None
    ) -> None:
        channel = self.channel
        channel.send("spec", factory, setup)
        await channel.flush()
        stopper = asyncio.create_task(self._forward_stop())
        try:
            while (message := await channel.receive()) is not None:
                self._dispatch(message)
        finally:
            stopper.cancel()
            # Whatever is still open belonged to a child that is gone: nothing more can be
            # checkpointed through it, so its calls fail at once and its partitions close as
            # lost. Closes already under way (answers to the child) are let finish.
            channel.fail_calls()
            self.interrupt.set()
            for partition in self.partitions.values():
                partition.closing = True
            for partition_id in list(self.partitions):
                await self._close(partition_id, CloseReason.OWNERSHIP_LOST)
            await channel.close(cancel_answers=False)

    async def _forward_stop(self) -> None:
        await self.stop.wait()
        self.interrupt.set()
        try:
            self.channel.send("stop")
            await self.channel.flush()
        except SourceUnavailable:
            logger.debug("stop not sent: the receiver process is gone")

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "batch":
            _, partition_id, batch = message
            partition = self.partitions.get(partition_id)
            if partition is None or partition.closing:
                self._ack(partition_id)
            else:
                partition.queue.put_nowait(_decode_batch(partition_id, batch))
        elif kind == "call":
            _, call_id, name, args = message
            if name == "initialize":
                self.channel.answer(call_id, self._initialize(*args))
            elif name == "close":
                self.channel.answer(call_id, self._close(args[0], CloseReason(args[1])))
            else:
                self.channel.answer(call_id, _unknown_call(name))
        elif kind == "reply":
            _, call_id, error, value = message
            self.channel.resolve(call_id, error, value)
        elif kind == "finished":
            self.finished, self.error = True, message[1]
        else:
            logger.error("unknown message from the receiver process", extra={"kind": kind})

    def _ack(self, partition_id: str) -> None:
        try:
            self.channel.send("ack", partition_id)
        except SourceUnavailable:
            logger.debug("ack not sent: the receiver process is gone")

    async def _initialize(self, partition_id: str) -> None:
        if partition_id in self.partitions:
            # The child closes a partition before it claims it again; be safe anyway.
            await self._close(partition_id, CloseReason.OWNERSHIP_LOST)
        partition = _RemotePartition(partition_id, self.channel)
        await self.handler.on_partition_initialize(partition)
        self.initialized += 1
        self.partitions[partition_id] = partition
        partition.worker = asyncio.create_task(
            self._work(partition), name=f"partition-{partition_id}"
        )

    async def _work(self, partition: _RemotePartition) -> None:
        handler = self.handler
        while (events := await partition.queue.get()) is not None:
            if not partition.abandoned and not partition.closing:
                delivered = await deliver(
                    functools.partial(handler.on_batch, partition, events),
                    partition_id=partition.partition_id,
                    first_sequence=events[0].sequence,
                    closing=lambda: partition.closing,
                    stop=self.interrupt,
                )
                partition.abandoned = partition.abandoned or not delivered
            self._ack(partition.partition_id)

    async def _close(self, partition_id: str, reason: CloseReason) -> None:
        partition = self.partitions.pop(partition_id, None)
        if partition is None:
            return
        if reason is CloseReason.OWNERSHIP_LOST:
            # Another instance owns the partition now: its batches not started are its own.
            partition.closing = True
            while not partition.queue.empty():
                if partition.queue.get_nowait() is not None:
                    self._ack(partition_id)
        partition.queue.put_nowait(None)
        if partition.worker is not None:
            # Finish the batch in flight (and on shutdown the queued ones) before closing.
            await asyncio.shield(partition.worker)
        partition.closing = True
        try:
            await self.handler.on_partition_close(partition, reason)
        finally:
            partition.closed = True


async def _unknown_call(name: str) -> None:
    raise SourceError(f"the receiver process asked for an unknown call {name!r}")


class SubprocessSource:
    """EventSource running another source (built by ``factory`` in a child process).

    ``factory`` and ``setup`` (run first in the child, e.g. to configure logging) must be
    picklable: module-level functions, or functools.partial of them with picklable arguments.
    """

    def __init__(
        self,
        factory: Callable[[], EventSource],
        *,
        setup: Callable[[], None] | None = None,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.factory = factory
        self.setup = setup
        self.window = window
        self.restarts = 0
        # The current child's pid (None between children), for status and tests.
        self.child_pid: int | None = None

    async def run(self, handler: BatchHandler, stop: asyncio.Event) -> None:
        failures = 0
        while True:
            session = await self._run_child(handler, stop)
            error = self._outcome(session, stop)
            if error is None:
                return
            # A child that never got a partition going is failing at start: after a few such
            # attempts in a row, report it instead of restarting for ever.
            failures = 0 if session.initialized else failures + 1
            if not error.retryable or failures >= MAX_FAILED_STARTS:
                raise error
            if stop.is_set():
                return
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            self.restarts += 1
            logger.error(
                "receiver process failed; starting a new one",
                extra={"error": str(error), "restart_in_s": delay},
            )
            if await wait_or_stop(stop, delay):
                return

    async def _run_child(self, handler: BatchHandler, stop: asyncio.Event) -> _ParentSession:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(self.window),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self.child_pid = process.pid
        session = _ParentSession(process, handler, stop)
        try:
            await session.run(self.factory, self.setup)
        finally:
            if process.returncode is None and not session.finished:
                process.kill()
            session.exit_code = await process.wait()
            self.child_pid = None
        return session

    @staticmethod
    def _outcome(session: _ParentSession, stop: asyncio.Event) -> SourceError | None:
        """The error that ended a child, or None after a clean stop."""
        if not session.finished:
            return SourceUnavailable(
                f"the receiver process exited unexpectedly (exit code {session.exit_code})"
            )
        if session.error is not None:
            return _decode_error(session.error)
        if not stop.is_set():
            return SourceUnavailable("the receiver process stopped before it was asked to")
        return None


# --- the child side ---------------------------------------------------------------------------


class _Forwarder:
    """The BatchHandler of the child's source: hands everything to the parent."""

    def __init__(self, channel: _Channel, window: int) -> None:
        self.channel = channel
        self.window = window
        self.contexts: dict[str, PartitionContext] = {}
        self._room: dict[str, asyncio.Semaphore] = {}

    async def on_partition_initialize(self, context: PartitionContext) -> None:
        partition_id = context.partition_id
        self.contexts[partition_id] = context
        self._room[partition_id] = asyncio.Semaphore(self.window)
        await self.channel.call("initialize", partition_id)

    async def on_batch(self, context: PartitionContext, events: list[ReceivedEvent]) -> None:
        room = self._room[context.partition_id]
        await room.acquire()
        # Not flushed: the pipe empties only when the parent's event loop is between batches,
        # and waiting for that here would stall the SDK's receiving. The window bounds what
        # waits in the buffer.
        self.channel.send("batch", context.partition_id, _encode_batch(events))

    async def on_partition_close(self, context: PartitionContext, reason: CloseReason) -> None:
        try:
            await self.channel.call("close", context.partition_id, reason.value)
        finally:
            self.contexts.pop(context.partition_id, None)
            self._room.pop(context.partition_id, None)

    def ack(self, partition_id: str) -> None:
        room = self._room.get(partition_id)
        if room is not None:
            room.release()

    def context(self, partition_id: str) -> PartitionContext:
        context = self.contexts.get(partition_id)
        if context is None:
            raise SourceError(f"partition {partition_id} is not owned by this receiver")
        return context

    def serve(self, call_id: int, name: str, args: tuple[Any, ...]) -> None:
        if name in _CONTEXT_CALLS:
            self.channel.answer(call_id, self._call_context(name, *args))
        else:
            self.channel.answer(call_id, _unknown_call(name))

    async def _call_context(self, name: str, partition_id: str, *args: Any) -> Any:
        context = self.contexts.get(partition_id)
        if context is None:
            raise SourceError(f"partition {partition_id} is not owned by this receiver")
        return await getattr(context, name)(*args)


async def _open_pipes(read_fd: int, write_fd: int) -> _Channel:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(write_fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return _Channel(reader, writer)


async def _child(read_fd: int, write_fd: int, window: int) -> int:
    channel = await _open_pipes(read_fd, write_fd)
    spec = await channel.receive()
    if spec is None or spec[0] != "spec":
        return 2
    _, factory, setup = spec
    if setup is not None:
        setup()
    stop = asyncio.Event()
    forwarder = _Forwarder(channel, window)
    try:
        source: EventSource = factory()
    except Exception as exc:
        channel.send("finished", _encode_error(exc))
        await channel.flush()
        return 1
    running = asyncio.create_task(source.run(forwarder, stop), name="source")
    reading = asyncio.create_task(_child_read(channel, forwarder, stop), name="parent-messages")
    await asyncio.wait({running, reading}, return_when=asyncio.FIRST_COMPLETED)
    if not running.done():
        # The parent is gone: nobody can process or checkpoint any more.
        logger.warning("parent process gone; the receiver exits")
        running.cancel()
        await asyncio.wait({running}, timeout=ORPHAN_EXIT_S)
        return 1
    error = running.exception()
    if error is not None:
        logger.error("source failed in the receiver process", exc_info=error)
    try:
        channel.send("finished", None if error is None else _encode_error(error))
        await channel.flush()
    except SourceUnavailable:
        return 1
    reading.cancel()
    await asyncio.wait({reading})
    await channel.close(cancel_answers=True)
    return 0 if error is None else 1


async def _child_read(channel: _Channel, forwarder: _Forwarder, stop: asyncio.Event) -> None:
    while (message := await channel.receive()) is not None:
        kind = message[0]
        if kind == "ack":
            forwarder.ack(message[1])
        elif kind == "call":
            _, call_id, name, args = message
            forwarder.serve(call_id, name, args)
        elif kind == "reply":
            _, call_id, error, value = message
            channel.resolve(call_id, error, value)
        elif kind == "stop":
            stop.set()
    channel.fail_calls()


def main() -> None:
    """Entry point of the child: ``python -m stream.subprocess_source WINDOW``."""
    window = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_WINDOW
    # The protocol owns the pipes: keep private copies and point fd 0 and 1 elsewhere, so a
    # library that prints cannot corrupt a message.
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
    # Interrupts are the parent's to handle (a terminal sends them to both): it asks this
    # process to stop once its batches are processed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(asyncio.run(_child(read_fd, write_fd, window)))


if __name__ == "__main__":
    main()
