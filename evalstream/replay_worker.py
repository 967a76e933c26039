"""One worker process of ``evalstream replay --workers N``: the in-process reader
(``stream.replay.flow.read``) over the share of the job's partitions that its command
(``evalstream.replay_pool``) hands it, its counts reported back for the progress display.

Started as ``python -m evalstream.replay_worker``; the settings, the job and the share come over
the pipe (``stream.sources.subprocess_channel``). It stops after its batches in flight, with
their checkpoints, when asked or on SIGTERM; interrupts from the terminal are the command's to
handle. It dies with the command, however the command dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path

from common.errors import leaves
from evalstream import wiring
from evalstream.wiring import replay as replay_wiring
from evalstream.worker_pipe import finished, listen, run_worker, started
from stream.exceptions import SourceUnavailable
from stream.replay import flow
from stream.replay.job import JobFile
from stream.replay.spec import ReplaySpec

logger = logging.getLogger(__name__)

# prctl(2): the signal this process gets when the thread that started it exits.
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGKILL this process when its command dies: a killed command's workers must not go on
    reading beside its ``--resume``. Linux only; elsewhere a worker notices the closed pipe."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


async def _work(read_fd: int, write_fd: int) -> int:
    begun = await started(read_fd, write_fd)
    if begun is None:
        return 2
    channel, (parent, settings, spec_json, job_path, share, reading, rate), stop = begun
    if os.getppid() != parent:
        return 2  # the command died before this process could ask to die with it
    listener = asyncio.create_task(listen(channel, stop), name="command-messages")
    spec = ReplaySpec.model_validate_json(spec_json)
    totals: Counter[str] = Counter()

    def on_events(count: int, advanced: float) -> None:
        if not channel.broken:
            with contextlib.suppress(SourceUnavailable):
                channel.send("events", count, advanced, dict(totals))

    done, error = False, None
    job = JobFile(Path(job_path))
    try:
        pieces = replay_wiring.pieces(settings, spec, rate=rate, publisher=None)
        async with AsyncExitStack() as stack:
            store = (
                await stack.enter_async_context(wiring.store(settings))
                if spec.mode.stores
                else None
            )
            await stack.enter_async_context(pieces.reader)
            done = await flow.read(
                job, spec, pieces, share, reading, store, totals, on_events, stop
            )
            job.note_unreadable(pieces.reader.unreadable)
    except Exception as exc:  # the worker's boundary: reported to the command, then exit 1
        error = leaves(exc)[0]
        logger.error("replay worker failed", exc_info=error)
    finally:
        await job.aclose()
    listener.cancel()
    return await finished(channel, error, done, dict(totals))


def main() -> None:
    _die_with_parent()
    run_worker(_work)


if __name__ == "__main__":
    main()
