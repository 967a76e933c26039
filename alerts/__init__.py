"""Alerts: publishing breaches to a topic, subscribing to it, and handing alerts to people.

Ports in ``alerts.ports``; the subscription model and settings in ``alerts.config``; the embedded
SQLite topic in ``alerts.sqlite_bus``; the Service Bus topic in ``alerts.servicebus*``; the
subscriber loop in ``alerts.listener``; console and webhook handlers in ``alerts.handlers``.
"""

from alerts.config import SubscriptionSpec
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
