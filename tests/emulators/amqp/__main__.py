"""Run the AMQP test broker by hand: `python -m tests.emulators.amqp --port 5672 --hub name:4`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal

from .broker import Broker
from .eventhubs import EventHubs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.emulators.amqp", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument(
        "--hub",
        action="append",
        default=[],
        metavar="NAME:PARTITIONS[:CG,...]",
        help="create an event hub (repeatable)",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    broker = Broker(args.host, args.port)
    await broker.start()
    hubs = EventHubs.install(broker)
    try:
        # The Service Bus half lives in its own module; install it when it is there.
        servicebus = importlib.import_module(f"{__package__}.servicebus")
        servicebus.install(broker)
    except ModuleNotFoundError:
        pass
    for spec in args.hub:
        name, _, rest = spec.partition(":")
        count, _, groups = rest.partition(":")
        hubs.create_hub(name, int(count or 2), tuple(g for g in groups.split(",") if g))
    # CLI output. Event Hubs clients append `EntityPath=<hub>`; Service Bus uses it as it is.
    print(f"AMQP test broker on {args.host}:{broker.port}", flush=True)
    print(
        f"Endpoint=sb://{args.host}:{broker.port}/;SharedAccessKeyName=k;SharedAccessKey=a2V5;"
        "UseDevelopmentEmulator=true;",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
