"""Run the local Batch test server by hand: ``python -m tests.emulators.batch --port 8090``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from pathlib import Path

from tests.emulators.batch import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME
from tests.emulators.batch.server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.batch", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--account-name", default=DEFAULT_ACCOUNT_NAME)
    parser.add_argument("--account-key", default=DEFAULT_ACCOUNT_KEY, help="base64 shared key")
    parser.add_argument("--no-auth", action="store_true", help="accept unsigned requests")
    parser.add_argument("--work-dir", type=Path, help="task directories (default: a temp dir)")
    parser.add_argument("--max-concurrency", type=int, default=16, help="tasks running at once")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="batch-server-"))
    work_dir.mkdir(parents=True, exist_ok=True)

    def ready(port: int) -> None:
        print(
            f"batch server ready at http://{args.host}:{port}/ account={args.account_name}"
            f" work_dir={work_dir}",
            flush=True,
        )

    async def run() -> None:
        task = asyncio.ensure_future(
            serve(
                host=args.host,
                port=args.port,
                account_name=args.account_name,
                account_key=None if args.no_auth else args.account_key,
                work_dir=work_dir,
                max_concurrency=args.max_concurrency,
                ready=ready,
            )
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
