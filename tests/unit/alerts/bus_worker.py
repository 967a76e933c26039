"""A separate process on the bus file, for the multi-process tests: publisher or receiver.

    python -m tests.unit.alerts.bus_worker publish PATH COUNT BATCH
    python -m tests.unit.alerts.bus_worker receive PATH EXPECTED_TOTAL OUT_FILE

The receiver opens, creates OUT_FILE, starts receiving once a file ``PATH.go`` appears, completes
everything it gets and writes one message id per line to OUT_FILE, until the subscription has
been empty for a while after a file ``PATH.done`` appeared.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alerts import SubscriptionSpec
from alerts.sqlite_bus import SqliteAlertPublisher, SqliteAlertReceiver
from tests.unit.alerts.factories import make_breach

SPEC = SubscriptionSpec("all", lock_duration_s=30.0)


async def publish(path: Path, count: int, batch: int) -> None:
    async with SqliteAlertPublisher(path, [SPEC]) as pub:
        for start in range(0, count, batch):
            await pub.publish([make_breach(n) for n in range(start, min(start + batch, count))])


async def receive(path: Path, out: Path) -> None:
    done = path.with_name(path.name + ".done")
    go = path.with_name(path.name + ".go")
    async with SqliteAlertReceiver(path, SPEC, poll_interval_s=0.005) as rx:
        with out.open("w") as sink:
            while not go.exists():
                await asyncio.sleep(0.005)
            while True:
                alerts = await rx.receive(7, 0.2)
                for alert in alerts:
                    await rx.complete(alert)
                    sink.write(alert.message_id + "\n")
                sink.flush()
                if not alerts and done.exists():
                    return


def main() -> None:
    command, path = sys.argv[1], Path(sys.argv[2])
    if command == "publish":
        asyncio.run(publish(path, int(sys.argv[3]), int(sys.argv[4])))
    else:
        asyncio.run(receive(path, Path(sys.argv[3])))


if __name__ == "__main__":
    main()
