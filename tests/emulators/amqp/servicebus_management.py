"""The Service Bus entity management node (`<entity>/$management`) of the test broker.

Answers the request/response operations azure-servicebus 7.15 uses on a receiver:
renew-lock, peek-message, receive-by-sequence-number (deferred messages) and
update-disposition (the settlement fallback, and the only way to settle a deferred message).
Replies carry `statusCode` / `statusDescription` / `errorCondition` application properties
(that spelling: the SDK reads exactly these names).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from proton import Array

from .servicebus_messages import render, render_delivery, timestamp_array
from .servicebus_model import MessageStore, ServiceBusModelError

logger = logging.getLogger(__name__)

RENEW_LOCK = "com.microsoft:renew-lock"
PEEK_MESSAGE = "com.microsoft:peek-message"
RECEIVE_BY_SEQUENCE_NUMBER = "com.microsoft:receive-by-sequence-number"
UPDATE_DISPOSITION = "com.microsoft:update-disposition"

# Receiver settle modes as the SDK sends them in receive-by-sequence-number.
_SETTLE_MODE_FIRST = 0  # receive-and-delete

# update-disposition's `disposition-status` values (the SDK's MESSAGE_MGMT_SETTLEMENT_TERM_MAP).
_COMPLETED, _ABANDONED, _DEFERRED, _SUSPENDED = "completed", "abandoned", "defered", "suspended"


@dataclass
class ManagementReply:
    """What goes back on the management link: status, optional error, and a map body."""

    status_code: int
    body: dict[str, Any] | None = field(default_factory=dict)
    description: str = ""
    error_condition: str | None = None

    def error_properties(self) -> dict[str, Any]:
        """The error condition under both names the SDK reads (the Service Bus handlers read
        `errorCondition`, pyamqp's management link `error-condition`)."""
        if self.error_condition is None:
            return {}
        return {"errorCondition": self.error_condition, "error-condition": self.error_condition}

    def application_properties(self) -> dict[str, Any]:
        return {
            "statusCode": self.status_code,
            "statusDescription": self.description,
            **self.error_properties(),
        }


def error_reply(exc: ServiceBusModelError) -> ManagementReply:
    return ManagementReply(
        status_code=exc.status_code,
        body=None,
        description=exc.description,
        error_condition=exc.condition,
    )


def unsupported(operation: str) -> ManagementReply:
    logger.info("unsupported management operation", extra={"operation": operation})
    return ManagementReply(
        status_code=501,
        body=None,
        description=f"The test broker does not implement {operation!r}.",
        error_condition="amqp:not-implemented",
    )


def _elements(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, Array):
        return list(value.elements)
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _tokens(value: Any) -> list[uuid.UUID]:
    tokens = []
    for item in _elements(value):
        if isinstance(item, uuid.UUID):
            tokens.append(item)
        elif isinstance(item, bytes | bytearray | memoryview) and len(bytes(item)) == 16:
            tokens.append(uuid.UUID(bytes=bytes(item)))
        else:
            tokens.append(uuid.UUID(str(item)))
    return tokens


def _get(body: dict[Any, Any], name: str) -> Any:
    # Keys arrive as AMQP strings or symbols; both decode to str subclasses.
    for key, value in body.items():
        if str(key) == name:
            return value
    return None


def handle_request(store: MessageStore, operation: str, body: Any) -> ManagementReply:
    """Run one management operation against `store` and say what to answer."""
    request = body if isinstance(body, dict) else {}
    try:
        if operation == RENEW_LOCK:
            return _renew_lock(store, request)
        if operation == PEEK_MESSAGE:
            return _peek(store, request)
        if operation == RECEIVE_BY_SEQUENCE_NUMBER:
            return _receive_deferred(store, request)
        if operation == UPDATE_DISPOSITION:
            return _update_disposition(store, request)
    except ServiceBusModelError as exc:
        return error_reply(exc)
    return unsupported(operation)


def _renew_lock(store: MessageStore, request: dict[Any, Any]) -> ManagementReply:
    expirations = [store.renew_lock(token) for token in _tokens(_get(request, "lock-tokens"))]
    return ManagementReply(200, {"expirations": timestamp_array(expirations)})


def _message_list(entries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"messages": list(entries)}


def _peek(store: MessageStore, request: dict[Any, Any]) -> ManagementReply:
    start = int(_get(request, "from-sequence-number") or 1)
    count = int(_get(request, "message-count") or 1)
    messages = store.peek(start, count)
    if not messages:
        return ManagementReply(204, None, "No messages to peek.")
    return ManagementReply(200, _message_list({"message": render(m)} for m in messages))


def _receive_deferred(store: MessageStore, request: dict[Any, Any]) -> ManagementReply:
    numbers = [int(n) for n in _elements(_get(request, "sequence-numbers"))]
    mode = _get(request, "receiver-settle-mode")
    peek_lock = mode is None or int(mode) != _SETTLE_MODE_FIRST
    deliveries = store.receive_deferred(numbers, peek_lock=peek_lock)
    entries = []
    for delivery in deliveries:
        entry: dict[str, Any] = {"message": render_delivery(delivery)}
        if delivery.lock_token is not None:
            entry["lock-token"] = delivery.lock_token
        entries.append(entry)
    return ManagementReply(200, _message_list(entries))


def _update_disposition(store: MessageStore, request: dict[Any, Any]) -> ManagementReply:
    status = str(_get(request, "disposition-status") or "")
    tokens = _tokens(_get(request, "lock-tokens"))
    for token in tokens:
        if status == _COMPLETED:
            store.complete(token)
        elif status == _ABANDONED:
            store.abandon(token)
        elif status == _DEFERRED:
            store.defer(token)
        elif status == _SUSPENDED:
            store.dead_letter_message(
                token,
                _get(request, "deadletter-reason") or None,
                _get(request, "deadletter-description") or None,
            )
        else:
            return ManagementReply(
                400,
                None,
                f"Unknown disposition-status {status!r}.",
                "com.microsoft:argument-error",
            )
    return ManagementReply(200, {})
