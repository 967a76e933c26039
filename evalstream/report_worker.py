"""The live ``/report`` page built in a process of its own (``python -m evalstream.report_worker``),
started per request by evalstream.live_report: reading a range of the store and drawing it is CPU
work of up to seconds that would otherwise be taken from the process that processes events (the
processor itself on the Azure backend or with one worker), and a lower priority lets processing
go first. Messages: the page, ``("page", html)``, or why it cannot be built now,
``("unavailable", reason)``; then ``("finished", error)``.
"""

from __future__ import annotations

import logging
import os

from common.errors import EvalstreamError
from evalstream.worker_pipe import finished, run_worker, started

logger = logging.getLogger(__name__)

# Added to the processor's niceness: a page waits for the CPU behind a batch, not the reverse.
REPORT_NICE = 10


async def _work(read_fd: int, write_fd: int) -> int:
    begun = await started(read_fd, write_fd)
    if begun is None:
        return 2
    channel, (settings, wanted), _ = begun
    os.nice(REPORT_NICE)
    # Imported here, after the start message: the plotting library is this process's alone.
    from evalstream.wiring.report import build_report
    from report import render_html

    error = None
    try:
        try:
            data = await build_report(settings, wanted)
        except EvalstreamError as exc:
            channel.send("unavailable", str(exc))
        else:
            channel.send("page", render_html(data))
    except Exception as exc:  # the worker's supervision boundary: reported, then exit 1
        error = exc
        logger.error("the report could not be drawn", exc_info=exc)
    return await finished(channel, error)


def main() -> None:
    run_worker(_work)


if __name__ == "__main__":
    main()
