"""The entity plug-in interface of the test broker: the hooks an entity overrides, and the
deliveries, management requests and replies those hooks receive and return.

Plug-in interface for entities (stable; Service Bus and Event Hubs both use only this)
--------------------------------------------------------------------------------------
Handler (`EntityHandler`; subclass it and override what you need; all run on the broker loop)
    `async on_attach(link)`: a client attached a link to an address of yours. `link.role` is
        `"sender"` when the broker sends (client receiver; `link.address` = source address) or
        `"receiver"` when the broker receives (client sender; `link.address` = target address).
        Read `link.path` (normalised address), `link.properties` (str keys),
        `link.desired_capabilities` (list of str),
        `link.filters` (source filter set, str keys → values, described values unwrapped to
        `Described`), `link.snd_settle_mode` / `link.rcv_settle_mode` (0 unsettled/first,
        1 settled/second). Raise `LinkRefused(condition, description)` to refuse: the broker
        answers the attach and immediately detaches with that error. Set
        `link.reply_properties` (dict with symbol keys) to send attach properties back.
        Broker-receiver links get `credit_window` credit from the broker automatically.
        `link.state` is a dict for the handler's own bookkeeping; `OutgoingDelivery.context`
        likewise per delivery.
    `async on_transfer(link, delivery) -> outcome | None`: a complete incoming message on a
        broker-receiver link. `delivery` is an `IncomingDelivery` (`.tag` bytes,
        `.message_format` int — 0x80013700 (`BATCH_MESSAGE_FORMAT`) is a batch, see
        `message.batch_parts` — `.settled` bool, `.payload` encoded message bytes,
        `.delivery_id`). Return an outcome (`codec.accepted()`, `codec.rejected(cond, desc)`,
        `codec.released()`, any described state) and the broker sends the disposition if the
        client did not pre-settle; return None to settle later with
        `link.settle(delivery, outcome)`.
    `on_flow(link)`: the client changed credit on a broker-sender link (also called right after
        attach). `link.credit` is the credit left; send while it is > 0. If the client asked to
        drain, the broker spends the leftover credit after on_flow returns (so send synchronously).
    `on_disposition(link, delivery, state, settled)`: the client sent a disposition for an
        `OutgoingDelivery` the broker sent on this link; `state` is the decoded outcome
        (`Described`, `codec.descriptor_of(state)` gives ACCEPTED/REJECTED/RELEASED/MODIFIED; its
        fields via `codec.fields_of(state)`). To answer an unsettled disposition with the broker's
        settled one, call `link.settle_outgoing(delivery, state)`.
    `on_detach(link, error)`: the link is gone (client detach, session end, connection lost;
        `error` is the client's error Described or None). Forget it; do not send on it.
    `async on_management(request) -> ManagementReply`: request/response on `<prefix>/$management`
        (or on bare `$management` for the handler registered with prefix `$management`).
        `request.operation` (str), `request.properties` (application properties, str keys),
        `request.body` (decoded body), `request.message` (proton.Message), `request.entity`
        (the path before `/$management`, or None). Reply with
        `ManagementReply(status, body=None, description=None, properties=None)`; the broker sets
        correlation-id and writes the status as both `status-code` and `statusCode` (and the
        description as `status-description` / `statusDescription`) and routes the reply to the
        client's response link.

Sending on a broker-sender link
    `link.send(payload, *, tag=None, settled=None, message_format=0) -> OutgoingDelivery`.
    `payload` is an encoded message (`message.encode_message(proton.Message)` or bytes rewritten
    with `message.with_annotations` / `message.with_header`). Tags default to 16 random bytes
    (Service Bus lock tokens are `UUID(bytes_le=tag)`); `settled` defaults to the link's
    snd-settle-mode (True if 1). Sending without credit queues the message until credit comes.
    Large payloads are split into several transfer frames.

Detaching with an error
    `link.detach(condition, description=None)` (e.g. `"amqp:link:stolen"`,
    `"com.microsoft:server-busy"`); on_detach is then called with error None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from proton import Described, Message

from . import codec

if TYPE_CHECKING:
    from .links import Link

SERVER_BUSY = "com.microsoft:server-busy"


class LinkRefused(Exception):
    """Raised by on_attach to refuse a link with an AMQP error condition."""

    def __init__(self, condition: str, description: str | None = None) -> None:
        super().__init__(f"{condition}: {description}")
        self.condition = condition
        self.description = description


@dataclass
class IncomingDelivery:
    delivery_id: int
    tag: bytes
    message_format: int
    settled: bool
    payload: bytes


@dataclass
class OutgoingDelivery:
    delivery_id: int
    tag: bytes
    payload: bytes
    settled: bool
    message_format: int = 0
    context: Any = None  # free for the entity handler (e.g. a lock record)


@dataclass
class ManagementRequest:
    address: str
    entity: str | None
    operation: str
    properties: dict[str, Any]
    body: Any
    message: Message
    link: Link


@dataclass
class ManagementReply:
    status: int
    body: Any = None
    description: str | None = None
    properties: dict[str, Any] | None = None


class EntityHandler:
    """Base class of an entity plug-in; see the module docstring for when each hook runs."""

    async def on_attach(self, link: Link) -> None:
        return None

    async def on_transfer(self, link: Link, delivery: IncomingDelivery) -> Described | None:
        return codec.accepted()

    def on_flow(self, link: Link) -> None:
        return None

    def on_disposition(
        self, link: Link, delivery: OutgoingDelivery, state: Any, settled: bool
    ) -> None:
        return None

    def on_detach(self, link: Link, error: Any) -> None:
        return None

    async def on_management(self, request: ManagementRequest) -> ManagementReply:
        return ManagementReply(501, description=f"operation {request.operation!r} not supported")


def normalise_address(address: str | None) -> str:
    """`amqps://host:port/a/b` → `a/b`; bare paths lose leading slashes."""
    if not address:
        return ""
    if "://" in address:
        address = urlsplit(address).path
    return address.strip("/")
