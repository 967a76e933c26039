"""Helpers shared by the Service Bus contract and fault tests."""

from __future__ import annotations

import time
from typing import Any

from azure.servicebus.aio import ServiceBusReceiver


async def receive_until(receiver: ServiceBusReceiver, count: int, wait_s: float) -> list[Any]:
    """Receive until `count` messages arrived or `wait_s` passed."""
    received: list[Any] = []
    deadline = time.monotonic() + wait_s
    while len(received) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        received += await receiver.receive_messages(
            max_message_count=count - len(received), max_wait_time=max(left, 0.1)
        )
    return received
