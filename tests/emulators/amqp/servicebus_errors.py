"""The errors the Service Bus test model reports, each with the AMQP error condition (and the
management status code) the broker puts on the wire for it."""

from __future__ import annotations


class ServiceBusModelError(Exception):
    """Base of the errors the model reports; `condition` is the AMQP error condition the
    broker puts on the wire for it (the SDK maps these conditions to its exceptions)."""

    condition = "amqp:internal-error"
    status_code = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class MessageLockLost(ServiceBusModelError):
    """The lock token is unknown or its lock expired (SDK: MessageLockLostError)."""

    condition = "com.microsoft:message-lock-lost"
    status_code = 410


class MessageNotFound(ServiceBusModelError):
    """No deferred message has that sequence number (SDK: MessageNotFoundError)."""

    condition = "com.microsoft:message-not-found"
    status_code = 404


class EntityNotFound(ServiceBusModelError):
    """No queue, topic or subscription under that path (SDK: MessagingEntityNotFoundError)."""

    condition = "amqp:not-found"
    status_code = 404


class EntityAlreadyExists(ServiceBusModelError):
    condition = "com.microsoft:entity-already-exists"
    status_code = 409


class InvalidOperation(ServiceBusModelError):
    """The operation makes no sense on this entity, e.g. dead-lettering from a DLQ."""

    condition = "amqp:not-allowed"
    status_code = 400
