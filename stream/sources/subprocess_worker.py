"""The child side of SubprocessSource: runs the real source in this process and forwards its
batches to the parent, which processes them and asks back for checkpoints.

Started by the parent as ``python -m stream.sources.subprocess_worker WINDOW``; the source
itself comes over the pipe as a picklable factory (see ``subprocess_source``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from typing import Any

from common.errors import EvalstreamError
from stream.exceptions import PartitionLost, SourceError, SourceUnavailable
from stream.ports import CloseReason, EventSource, PartitionContext, ReceivedEvent
from stream.sources.subprocess_channel import (
    DEFAULT_WINDOW,
    Channel,
    child_signals,
    encode_batch,
    encode_error,
    open_pipes,
    take_stdio,
    unknown_call,
)

logger = logging.getLogger(__name__)

# How long a child whose parent is gone may take to cancel its source before it exits anyway.
ORPHAN_EXIT_S = 5.0
# The PartitionContext methods the parent may call on the child's contexts.
_CONTEXT_CALLS = frozenset(
    {"checkpoint", "owned", "last_enqueued_sequence", "checkpointed_sequence"}
)


class _Forwarder:
    """The BatchHandler of the child's source: hands everything to the parent."""

    def __init__(self, channel: Channel, window: int) -> None:
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
        self.channel.send("batch", context.partition_id, encode_batch(events))

    async def on_idle(self, context: PartitionContext) -> None:
        # After the partition's batches (one pipe, in order): the parent's handler checkpoints
        # the end of a burst. Outside the window: an idle turn holds no events.
        self.channel.send("idle", context.partition_id)

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
            self.channel.answer(call_id, unknown_call(name))

    async def _call_context(self, name: str, partition_id: str, *args: Any) -> Any:
        context = self.contexts.get(partition_id)
        if context is None:
            if name == "owned":
                # Closed here (lost, or shut down) while the parent finished a batch of it:
                # the answer the parent acts on (no snapshot, no checkpoint), not an error it
                # would retry until the partition's close reaches it.
                return False
            raise SourceError(f"partition {partition_id} is not owned by this receiver")
        if name == "owned":
            try:
                return await context.owned()
            except PartitionLost as exc:
                # Why it is not held any more, as a value: errors cross as SourceError.
                return str(exc)
        return await getattr(context, name)(*args)


async def _child(read_fd: int, write_fd: int, window: int) -> int:
    channel = await open_pipes(read_fd, write_fd)
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
        channel.send("finished", encode_error(exc))
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
    if isinstance(error, EvalstreamError):
        # Ours, in one line: the parent says it (each restart, or as the run's error). A
        # traceback per restart buried that line under the SDK's chained errors.
        logger.debug("source failed in the receiver process", exc_info=error)
    elif error is not None:
        logger.error("source failed in the receiver process", exc_info=error)
    try:
        channel.send("finished", None if error is None else encode_error(error))
        await channel.flush()
    except SourceUnavailable:
        return 1
    reading.cancel()
    await asyncio.wait({reading})
    await channel.close(cancel_answers=True)
    return 0 if error is None else 1


async def _child_read(channel: Channel, forwarder: _Forwarder, stop: asyncio.Event) -> None:
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
    """Entry point of the child: ``python -m stream.sources.subprocess_worker WINDOW``."""
    window = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_WINDOW
    read_fd, write_fd = take_stdio()
    # Interrupts are the parent's to handle (a terminal sends them to both): it asks this
    # process to stop once its batches are processed. So is a SIGTERM sent to the whole
    # process group (kill -TERM -PGID, systemd's default KillMode): ended by it, this process
    # could not write the final checkpoints, and the parent took the end for a crash. (Not
    # held back at start like SIGINT: the mask start_child sets can reach a child another
    # task forks meanwhile, and an ingest worker is drained with SIGTERM.)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child_signals()
    sys.exit(asyncio.run(_child(read_fd, write_fd, window)))


if __name__ == "__main__":
    main()
