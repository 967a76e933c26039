"""The bytes of an AMQP message body of any kind, for the Event Hubs and Service Bus adapters
(both SDKs name the kinds ``data``, ``sequence`` and ``value``)."""

from __future__ import annotations

from collections.abc import Iterable


def body_bytes(body_type: str, body: object) -> bytes:
    """A data body's sections joined; a value body's bytes or text as they are (none: empty);
    anything else (a sequence body, a value of another type) as its repr, so its content is
    kept to read."""
    if body_type == "data":
        assert isinstance(body, Iterable)
        return b"".join(bytes(part) for part in body)
    if body_type == "sequence":
        # The SDKs hand the sections over as a generator: its repr would hold no content.
        assert isinstance(body, Iterable)
        return repr(list(body)).encode()
    if body is None:
        return b""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, str):
        return body.encode()
    return repr(body).encode()
