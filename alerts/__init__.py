"""Alerts: publishing breaches to a topic, subscribing to it, and handing alerts to people.

Ports in ``alerts.ports``; the embedded SQLite topic in ``alerts.sqlite_bus``; the subscriber
loop in ``alerts.listener``; console and webhook handlers in ``alerts.handlers``.
"""

from alerts.exceptions import (
    AlertBusBusyError,
    AlertBusError,
    AlertClientClosedError,
    AlertDeliveryError,
    AlertError,
    LockLostError,
    UnknownSubscriptionError,
    WebhookRejectedError,
)
from alerts.ports import (
    INVALID_BODY,
    MAX_DELIVERY_COUNT_EXCEEDED,
    AlertHandler,
    AlertPublisher,
    AlertReceiver,
    DeadLetteredAlert,
    ReceivedAlert,
    SubscriptionSpec,
)

__all__ = [
    "INVALID_BODY",
    "MAX_DELIVERY_COUNT_EXCEEDED",
    "AlertBusBusyError",
    "AlertBusError",
    "AlertClientClosedError",
    "AlertDeliveryError",
    "AlertError",
    "AlertHandler",
    "AlertPublisher",
    "AlertReceiver",
    "DeadLetteredAlert",
    "LockLostError",
    "ReceivedAlert",
    "SubscriptionSpec",
    "UnknownSubscriptionError",
    "WebhookRejectedError",
]
