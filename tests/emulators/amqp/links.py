"""Links and sessions as the test broker sees them: credit, deliveries in both directions,
settlement and detach. `Link` is what entity handlers talk to (see `entity.py`)."""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import TYPE_CHECKING, Any

from proton import Array, uint

from . import codec
from .codec import FRAME_AMQP, composite
from .entity import EntityHandler, IncomingDelivery, OutgoingDelivery, normalise_address

if TYPE_CHECKING:
    from .broker import Broker
    from .connection import Connection

SESSION_WINDOW = 1 << 30


def str_keys(mapping: Any) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        return {}
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in mapping.items()}


def _symbol_list(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.elements if isinstance(value, Array) else value
    if not isinstance(items, list | tuple):
        items = [items]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in items]


class Link:
    """One attached link, seen from the broker. `role` is the broker's role."""

    def __init__(
        self,
        session: Session,
        name: str,
        handle: int,
        remote_handle: int,
        role: str,
        fields: list[Any],
    ) -> None:
        self.session = session
        self.name = name
        self.handle = handle
        self.remote_handle = remote_handle
        self.role = role
        self.snd_settle_mode = int(fields[3] or 0)
        self.rcv_settle_mode = int(fields[4] or 0)
        self.source = codec.fields_of(fields[5], codec.SOURCE) if fields[5] is not None else None
        self.target = codec.fields_of(fields[6], codec.TARGET) if fields[6] is not None else None
        self.initial_delivery_count = fields[9]
        self.properties = str_keys(fields[13])
        self.desired_capabilities = _symbol_list(fields[12])
        terminus = self.source if role == "sender" else self.target
        self.address: str = str(terminus[0]) if terminus and terminus[0] is not None else ""
        self.path = normalise_address(self.address)
        self.handler: EntityHandler | None = None
        self.reply_properties: dict[Any, Any] | None = None
        self.credit = 0
        self.delivery_count = int(fields[9] or 0) if role == "receiver" else 0
        self.drain = False
        self.detached = False
        self.backlog: deque[OutgoingDelivery] = deque()
        self.partial: list[bytes] = []
        self.partial_head: tuple[int, bytes, int, bool] | None = None
        self.state: dict[str, Any] = {}  # free for the entity handler

    @property
    def connection(self) -> Connection:
        return self.session.connection

    @property
    def broker(self) -> Broker:
        return self.session.connection.broker

    @property
    def filters(self) -> dict[str, Any]:
        if not self.source:
            return {}
        return str_keys(self.source[7])

    def __repr__(self) -> str:
        return f"<Link {self.role} {self.path!r} handle={self.handle}>"

    # -- broker-sender side ------------------------------------------------------------
    def send(
        self,
        payload: bytes,
        *,
        tag: bytes | None = None,
        settled: bool | None = None,
        message_format: int = 0,
    ) -> OutgoingDelivery:
        if self.role != "sender":
            raise RuntimeError("send() on a link where the broker receives")
        if settled is None:
            settled = self.snd_settle_mode == 1
        delivery = OutgoingDelivery(
            -1, tag if tag is not None else os.urandom(16), bytes(payload), settled, message_format
        )
        if self.detached:
            return delivery
        if self.credit > 0 and not self.backlog:
            self._transmit(delivery)
        else:
            self.backlog.append(delivery)
        return delivery

    def _transmit(self, delivery: OutgoingDelivery) -> None:
        self.credit -= 1
        self.delivery_count += 1
        self.session.transmit(self, delivery)

    def _flush_backlog(self) -> None:
        while self.backlog and self.credit > 0 and not self.detached:
            self._transmit(self.backlog.popleft())

    def settle_outgoing(self, delivery: OutgoingDelivery, state: Any) -> None:
        """Send the broker's settled disposition for a delivery it sent."""
        self.session.unsettled.pop(delivery.delivery_id, None)
        if not self.detached:
            self.session.send_disposition(False, delivery.delivery_id, True, state)

    # -- broker-receiver side ----------------------------------------------------------
    def settle(self, delivery: IncomingDelivery, outcome: Any) -> None:
        """Send the broker's disposition for a message the client sent unsettled."""
        if not delivery.settled and not self.detached:
            self.session.send_disposition(True, delivery.delivery_id, True, outcome)

    def detach(self, condition: str | None = None, description: str | None = None) -> None:
        """Detach (closing) this link from the broker side, optionally with an error."""
        if self.detached:
            return
        self.detached = True
        err = codec.error(condition, description) if condition else None
        self.connection.send(
            self.session.channel, composite(codec.DETACH, uint(self.handle), True, err)
        )
        self.session.detach_local(self)
        if self.handler is not None:
            self.broker.safe_call(self.handler.on_detach, self, None)

    def send_flow(self, echo: bool = False) -> None:
        s = self.session
        self.connection.send(
            s.channel,
            composite(
                codec.FLOW,
                uint(s.next_incoming_id),
                uint(SESSION_WINDOW),
                uint(s.next_outgoing_id),
                uint(SESSION_WINDOW),
                uint(self.handle),
                uint(self.delivery_count),
                uint(max(self.credit, 0)),
                uint(len(self.backlog)) if self.role == "sender" else None,
                self.drain if self.role == "sender" else None,
                echo,
            ),
        )


class Session:
    def __init__(
        self,
        connection: Connection,
        channel: int,
        remote_channel: int,
        remote_next_outgoing_id: int,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.remote_channel = remote_channel
        self.next_incoming_id = remote_next_outgoing_id
        self.next_outgoing_id = 0
        self.next_delivery_id = 0
        self.links: dict[int, Link] = {}  # by remote handle
        self.local_handles: dict[int, Link] = {}
        self.unsettled: dict[int, tuple[Link, OutgoingDelivery]] = {}

    def new_handle(self) -> int:
        return next(h for h in itertools.count() if h not in self.local_handles)

    def detach_local(self, link: Link) -> None:
        # The remote handle stays mapped until the client answers our detach.
        self.local_handles.pop(link.handle, None)
        for delivery_id in [d for d, (lk, _) in self.unsettled.items() if lk is link]:
            del self.unsettled[delivery_id]

    def transmit(self, link: Link, delivery: OutgoingDelivery) -> None:
        delivery.delivery_id = self.next_delivery_id
        self.next_delivery_id = (self.next_delivery_id + 1) & 0xFFFFFFFF
        if not delivery.settled:
            self.unsettled[delivery.delivery_id] = (link, delivery)
        chunk = max(512, self.connection.peer_max_frame_size - 256)
        payload = delivery.payload
        offsets = list(range(0, len(payload), chunk)) or [0]
        for index, start in enumerate(offsets):
            first = index == 0
            more = index < len(offsets) - 1
            body = codec.encode_transfer(
                link.handle,
                delivery.delivery_id if first else None,
                delivery.tag if first else None,
                delivery.message_format if first else None,
                delivery.settled,
                more,
            )
            self.next_outgoing_id = (self.next_outgoing_id + 1) & 0xFFFFFFFF
            self.connection.write(
                codec.frame_bytes(FRAME_AMQP, self.channel, body + payload[start : start + chunk])
            )

    def send_disposition(
        self, role_receiver: bool, delivery_id: int, settled: bool, state: Any
    ) -> None:
        self.connection.send(
            self.channel,
            composite(
                codec.DISPOSITION,
                role_receiver,
                uint(delivery_id),
                uint(delivery_id),
                settled,
                state,
                False,
            ),
        )
