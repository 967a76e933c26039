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
The child's side is ``subprocess_worker``; the messages between them, ``subprocess_channel``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

from common.errors import is_retryable
from common.retry import Backoff, Stopped, retry
from stream.delivery import deliver
from stream.exceptions import PartitionLost, SourceError, SourceUnavailable
from stream.ports import BatchHandler, CloseReason, EventSource, ReceivedEvent
from stream.sources import subprocess_worker
from stream.sources.subprocess_channel import (
    DEFAULT_WINDOW,
    Channel,
    ErrorValue,
    decode_batch,
    decode_error,
    end_child,
    start_child,
    unknown_call,
)

logger = logging.getLogger(__name__)

# Pauses before starting a new child after one died: 1 s doubling up to 10 s.
RESTART_BACKOFF = Backoff(initial_s=1.0, max_s=10.0)
# Children in a row that fail before initialising any partition, before the run gives up.
MAX_FAILED_STARTS = 5


# The child's source had an idle turn (put in a partition's queue, after its batches): not a
# batch of events, and not counted in the window of batches the child may send ahead.
IDLE: list[ReceivedEvent] = []


class _RemotePartition:
    """The PartitionContext handed to the handler here; its calls run in the child's source."""

    def __init__(self, partition_id: str, channel: Channel) -> None:
        self._partition_id = partition_id
        self._channel = channel
        # Batches in order; IDLE: the child's source found nothing new; None: the end.
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

    async def owned(self) -> bool:
        if self.closed:
            return False
        # True, False, or why the child's source no longer holds the partition.
        value: bool | str = await self._channel.call("owned", self._partition_id)
        if value is not True:
            # As when the child closes it on ownership loss: no retries, queued batches dropped.
            self.closing = True
        if isinstance(value, str):
            raise PartitionLost(value)
        return value

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

    # Event Hubs numbers events itself and the SDK chose the starting position already; its
    # writes and Cosmos DB's are acknowledged durable, so there is no lost tail to look for.
    rewindable = False

    async def resume_after(self, sequence: int) -> bool:
        return False

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
        self.channel = Channel(process.stdout, process.stdin)
        self.partitions: dict[str, _RemotePartition] = {}
        # Set on stop, or when the child is gone: ends the pauses between retries of a batch.
        self.interrupt = asyncio.Event()
        # Set by the child's last message: its source returned (with this error, if any).
        self.finished = False
        self.error: ErrorValue | None = None
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
                partition.queue.put_nowait(decode_batch(partition_id, batch))
        elif kind == "idle":
            partition = self.partitions.get(message[1])
            if partition is not None and not partition.closing:
                partition.queue.put_nowait(IDLE)
        elif kind == "call":
            _, call_id, name, args = message
            if name == "initialize":
                self.channel.answer(call_id, self._initialize(*args))
            elif name == "close":
                self.channel.answer(call_id, self._close(args[0], CloseReason(args[1])))
            else:
                self.channel.answer(call_id, unknown_call(name))
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
            if events is IDLE:
                if not partition.abandoned and not partition.closing:
                    await handler.on_idle(partition)
                continue
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
                dropped = partition.queue.get_nowait()
                if dropped is not None and dropped is not IDLE:
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
        failed_starts = 0
        started = False

        async def one_child() -> None:
            nonlocal failed_starts, started
            if started:
                self.restarts += 1
            started = True
            session = await self._run_child(handler, stop)
            error = self._outcome(session, stop)
            if error is not None:
                # A child that never got a partition going is failing at start.
                failed_starts = 0 if session.initialized else failed_starts + 1
                raise error

        def worth_restarting(error: BaseException) -> bool:
            # After a few failed starts in a row, report the error instead of restarting for
            # ever; a configuration error (not retryable) is reported at once.
            return is_retryable(error) and failed_starts < MAX_FAILED_STARTS

        def said(error: BaseException, wait: float) -> None:
            # An error, not a warning: nothing is received until a child works.
            logger.error(
                "receiver process failed (%s); starting another in %.2fs",
                error,
                wait,
                extra={"failed_starts": failed_starts, "retry_wait_s": wait},
            )

        try:
            await retry(
                one_child,
                backoff=RESTART_BACKOFF,
                what="receiver process",
                retryable=worth_restarting,
                stop=stop,
                on_failure=said,
            )
        except Stopped:
            return

    async def _run_child(self, handler: BatchHandler, stop: asyncio.Event) -> _ParentSession:
        process = await start_child(
            sys.executable, "-m", subprocess_worker.__name__, str(self.window)
        )
        self.child_pid = process.pid
        session = _ParentSession(process, handler, stop)
        try:
            await session.run(self.factory, self.setup)
        finally:
            if session.finished:
                session.exit_code = await process.wait()
            else:
                session.exit_code = await end_child(process)
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
            return decode_error(session.error)
        if not stop.is_set():
            return SourceUnavailable("the receiver process stopped before it was asked to")
        return None
