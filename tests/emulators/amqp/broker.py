"""A small AMQP 1.0 broker for tests: connections, sessions, links, SASL, CBS and fault injection.

The broker owns the protocol; entities (Event Hubs hubs, Service Bus queues/topics) are plug-ins.
It runs on one asyncio loop; every callback below runs on that loop, and the admin methods on
`Broker` may be called from any thread (they hop onto the loop with `Broker.call`).

Plug-in interface for entities (stable; Service Bus and Event Hubs both use only this)
--------------------------------------------------------------------------------------
Registration
    `broker.register(prefix, handler)`: the handler serves every address whose path is `prefix`
    or starts with `prefix + "/"` (case-insensitive, longest registered prefix wins). Addresses
    are normalised first: `amqps://host:port/a/b` → `a/b`. `broker.unregister(prefix)` removes it.
    `broker.add_extension(name, admin)`: an admin object (e.g. the Service Bus model) whose public
    attributes become reachable as `broker.<attr>` (so fixtures expose `create_queue` and friends
    without this file knowing them); `broker.extension(name)` returns it.

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

Fault injection (admin, any thread): `drop_connections()`, `stall(seconds)`,
`server_busy(seconds, mode="detach"|"reject")`, `clear_faults()`; `fault_count(name)` says
how often a fault hit a client ("dropped_connections", "server_busy_attach",
"server_busy_transfer"). Entities may consult `broker.is_busy()` themselves. CBS (`$cbs`)
accepts every put-token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import os
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proton import Array, Described, Message, ubyte, uint, ulong, ushort

from . import codec
from .codec import (
    AMQP_HEADER,
    FRAME_AMQP,
    FRAME_SASL,
    SASL_HEADER,
    Frame,
    FrameError,
    composite,
    encode_frame,
)
from .message import decode_message, encode_message

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_FRAME_SIZE = 65536
MAX_MESSAGE_SIZE = 1024 * 1024
CREDIT_WINDOW = 1000
SESSION_WINDOW = 1 << 30
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


def _str_keys(mapping: Any) -> dict[str, Any]:
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
        self.properties = _str_keys(fields[13])
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
        return _str_keys(self.source[7])

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


class Connection:
    """One client TCP connection: header exchange, SASL, then the frame loop."""

    def __init__(
        self, broker: Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.peer_max_frame_size = MAX_FRAME_SIZE
        self.sessions: dict[int, Session] = {}  # by remote channel
        self.closed = False
        self.held: list[bytes] = []  # output held back while the broker is stalled

    # -- output --------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.broker.stalled() or self.held:
            # Keep frame order: once something is held, everything after it waits too.
            self.held.append(data)
            self.broker.schedule_release(self)
            return
        self.writer.write(data)

    def release_held(self) -> None:
        held, self.held = self.held, []
        if not self.closed:
            self.writer.write(b"".join(held))

    def send(
        self, channel: int, performative: Described, payload: bytes = b"", kind: int = FRAME_AMQP
    ) -> None:
        self.write(encode_frame(kind, channel, performative, payload))

    # -- input ---------------------------------------------------------------------
    async def read_frame(self) -> Frame:
        head = await self.reader.readexactly(8)
        size, doff, kind, channel = struct.unpack(">IBBH", head)
        if size < 8 or doff < 2:
            raise FrameError(f"bad frame header {head!r}")
        rest = await self.reader.readexactly(size - 8)
        return codec.decode_frame_body(kind, channel, rest[doff * 4 - 8 :])

    async def run(self) -> None:
        try:
            await self._handshake()
            while not self.closed:
                frame = await self.read_frame()
                await self.broker.wait_while_stalled()
                if frame.code is None:
                    continue  # heartbeat
                await self.dispatch(frame)
                await self.writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("amqp connection failed")
        finally:
            self.teardown()

    async def _handshake(self) -> None:
        header = await self.reader.readexactly(8)
        await self.broker.wait_while_stalled()
        if header == SASL_HEADER:
            self.write(SASL_HEADER)
            self.send(
                0,
                composite(codec.SASL_MECHANISMS, codec.symbols("ANONYMOUS", "PLAIN", "MSSBCBS")),
                kind=FRAME_SASL,
            )
            frame = await self.read_frame()
            if frame.code != codec.SASL_INIT:
                raise FrameError(f"expected sasl-init, got {frame.code}")
            self.send(0, composite(codec.SASL_OUTCOME, ubyte(0), None), kind=FRAME_SASL)
            header = await self.reader.readexactly(8)
        self.write(AMQP_HEADER)
        if header != AMQP_HEADER:
            raise FrameError(f"unsupported protocol header {header!r}")

    def teardown(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()
        for session in list(self.sessions.values()):
            self._end_session(session, None)
        self.sessions.clear()
        self.broker.connections.discard(self)

    def abort(self) -> None:
        """Drop the TCP connection without any AMQP close (fault injection)."""
        self.writer.transport.abort()

    def _end_session(self, session: Session, error: Any) -> None:
        for link in list(session.links.values()):
            self._forget_link(session, link, error)

    def _forget_link(self, session: Session, link: Link, error: Any) -> None:
        session.links.pop(link.remote_handle, None)
        session.local_handles.pop(link.handle, None)
        if not link.detached:
            link.detached = True
            session.detach_local(link)
            if link.handler is not None:
                self.broker.safe_call(link.handler.on_detach, link, error)

    # -- performatives ----------------------------------------------------------------
    async def dispatch(self, frame: Frame) -> None:
        f = frame.fields
        code = frame.code
        if code == codec.OPEN:
            if f[2] is not None:
                self.peer_max_frame_size = min(int(f[2]), 1 << 20)
            self.send(
                0,
                composite(
                    codec.OPEN, "evalstream-test-broker", None, uint(MAX_FRAME_SIZE), ushort(255)
                ),
            )
        elif code == codec.BEGIN:
            channel = next(
                c for c in itertools.count() if c not in {s.channel for s in self.sessions.values()}
            )
            session = Session(self, channel, frame.channel, int(f[1] or 0))
            self.sessions[frame.channel] = session
            self.send(
                channel,
                composite(
                    codec.BEGIN,
                    ushort(frame.channel),
                    uint(0),
                    uint(SESSION_WINDOW),
                    uint(SESSION_WINDOW),
                    uint(65535),
                ),
            )
        elif code == codec.CLOSE:
            await self._on_close(f)
        elif frame.channel not in self.sessions:
            # Frames racing a session end (the client may detach after sending end).
            logger.debug("ignoring %#x on unknown channel %s", code, frame.channel)
        elif code == codec.ATTACH:
            await self._on_attach(self.sessions[frame.channel], f)
        elif code == codec.FLOW:
            self._on_flow(self.sessions[frame.channel], f)
        elif code == codec.TRANSFER:
            await self._on_transfer(self.sessions[frame.channel], f, frame.payload)
        elif code == codec.DISPOSITION:
            self._on_disposition(self.sessions[frame.channel], f)
        elif code == codec.DETACH:
            self._on_detach(self.sessions[frame.channel], f)
        elif code == codec.END:
            session = self.sessions.pop(frame.channel)
            self._end_session(session, f[0])
            self.send(session.channel, composite(codec.END))
        else:
            logger.warning("ignoring performative %#x", code)

    async def _on_close(self, f: list[Any]) -> None:
        for session in list(self.sessions.values()):
            self._end_session(session, f[0])
        self.sessions.clear()
        self.send(0, composite(codec.CLOSE))
        await self.writer.drain()
        self.closed = True
        self.writer.close()

    async def _on_attach(self, session: Session, f: list[Any]) -> None:
        client_is_receiver = bool(f[2])
        role = "sender" if client_is_receiver else "receiver"
        link = Link(session, str(f[0]), session.new_handle(), int(f[1]), role, f)
        session.links[link.remote_handle] = link
        session.local_handles[link.handle] = link
        refusal: LinkRefused | None = None
        handler = self.broker.resolve(link.path)
        if handler is None:
            refusal = LinkRefused("amqp:not-found", f"no entity at {link.path!r}")
        elif self.broker.is_busy() and not self.broker.is_service_node(link.path):
            refusal = LinkRefused(SERVER_BUSY, "the test broker is injecting server-busy")
            self.broker.fault_hits["server_busy_attach"] += 1
        else:
            try:
                await handler.on_attach(link)
                link.handler = handler
            except LinkRefused as exc:
                refusal = exc
        source = composite(codec.SOURCE, *link.source) if link.source is not None else None
        target = composite(codec.TARGET, *link.target) if link.target is not None else None
        # A refused attach still echoes both termini (pyamqp treats a null terminus as a broken
        # link and retries without ever seeing the error) and is followed by a detach with the
        # error, which is what the service does too.
        self.send(
            session.channel,
            composite(
                codec.ATTACH,
                link.name,
                uint(link.handle),
                not client_is_receiver,
                ubyte(link.snd_settle_mode),
                ubyte(link.rcv_settle_mode),
                source,
                target,
                None,
                False,
                uint(0) if role == "sender" else None,
                ulong(MAX_MESSAGE_SIZE),
                None,
                None,
                link.reply_properties,
            ),
        )
        if refusal is not None:
            link.detached = True
            session.detach_local(link)
            self.send(
                session.channel,
                composite(
                    codec.DETACH,
                    uint(link.handle),
                    True,
                    codec.error(refusal.condition, refusal.description),
                ),
            )
            return
        if role == "receiver":
            link.credit = self.broker.credit_window
            link.send_flow()
        else:
            if link.handler is not None:
                self.broker.safe_call(link.handler.on_flow, link)

    def _on_flow(self, session: Session, f: list[Any]) -> None:
        if f[4] is None:
            return  # session-level flow only
        link = session.links.get(int(f[4]))
        if link is None or link.detached:
            return
        if link.role == "sender":
            delivery_count = int(f[5]) if f[5] is not None else 0
            credit = int(f[6] or 0)
            # Credit as the client computes it, relative to the broker's delivery count.
            link.credit = delivery_count + credit - link.delivery_count
            link.drain = bool(f[8])
            link._flush_backlog()
            if link.handler is not None:
                self.broker.safe_call(link.handler.on_flow, link)
            if link.drain and link.credit > 0:
                link.delivery_count += link.credit
                link.credit = 0
                link.send_flow()
            elif f[9]:
                link.send_flow()
        elif f[9]:
            link.send_flow()

    async def _on_transfer(self, session: Session, f: list[Any], payload: bytes) -> None:
        session.next_incoming_id = (session.next_incoming_id + 1) & 0xFFFFFFFF
        link = session.links.get(int(f[0]))
        if link is None or link.detached:
            return
        if link.partial_head is None:
            link.partial_head = (int(f[1] or 0), bytes(f[2] or b""), int(f[3] or 0), bool(f[4]))
        link.partial.append(payload)
        if f[5]:
            return  # more frames of this delivery follow
        if f[9]:
            link.partial, link.partial_head = [], None
            return  # aborted
        delivery_id, tag, message_format, settled = link.partial_head
        delivery = IncomingDelivery(
            delivery_id, tag, message_format, settled, b"".join(link.partial)
        )
        link.partial, link.partial_head = [], None
        link.delivery_count += 1
        link.credit -= 1
        if link.credit <= self.broker.credit_window // 2:
            link.credit = self.broker.credit_window
            link.send_flow()
        if link.handler is None:
            return
        if self.broker.is_busy() and not self.broker.is_service_node(link.path):
            self.broker.fault_hits["server_busy_transfer"] += 1
            if self.broker.busy_mode == "detach":
                # The delivery stays unsettled; the client sees the link error and resends.
                link.detach(SERVER_BUSY, "the test broker is injecting server-busy")
                return
            outcome: Any = codec.rejected(SERVER_BUSY, "the test broker is injecting server-busy")
        else:
            try:
                outcome = await link.handler.on_transfer(link, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("entity handler failed on transfer to %s", link.path)
                outcome = codec.rejected("amqp:internal-error", str(exc))
        if outcome is not None:
            link.settle(delivery, outcome)

    def _on_disposition(self, session: Session, f: list[Any]) -> None:
        if not f[0]:
            return  # the client settling its own transfers: nothing to track
        first = int(f[1])
        last = int(f[2]) if f[2] is not None else first
        settled = bool(f[3])
        for delivery_id in range(first, last + 1):
            entry = (
                session.unsettled.pop(delivery_id, None)
                if settled
                else session.unsettled.get(delivery_id)
            )
            if entry is None:
                continue
            link, delivery = entry
            if link.handler is not None and not link.detached:
                self.broker.safe_call(link.handler.on_disposition, link, delivery, f[4], settled)

    def _on_detach(self, session: Session, f: list[Any]) -> None:
        link = session.links.get(int(f[0]))
        if link is None:
            return
        already = link.detached
        self._forget_link(session, link, f[2])
        if not already:
            self.send(session.channel, composite(codec.DETACH, uint(link.handle), True, None))


class _RequestResponseNode(EntityHandler):
    """`$cbs` and `$management` nodes: requests on the client's sender link, replies on the
    broker-sender link attached to the same node address."""

    def __init__(self, broker: Broker, target: EntityHandler | None) -> None:
        self.broker = broker
        self.target = target

    async def on_transfer(self, link: Link, delivery: IncomingDelivery) -> Described | None:
        message = decode_message(delivery.payload)
        props = _str_keys(message.properties)
        node = link.path
        entity = node[: -len("/$management")] if node.endswith("/$management") else None
        request = ManagementRequest(
            node,
            entity,
            str(props.get("operation", "")),
            props,
            codec.plain(message.body),
            message,
            link,
        )
        if node == "$cbs":
            reply = ManagementReply(202, description="Accepted")
        elif self.target is None:
            reply = ManagementReply(404, description=f"no entity for {node!r}")
        else:
            try:
                reply = await self.target.on_management(request)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("management handler failed for %s", node)
                reply = ManagementReply(500, description=str(exc))
        self._reply(link, message, reply)
        return codec.accepted()

    def _reply(self, request_link: Link, request: Message, reply: ManagementReply) -> None:
        properties: dict[str, Any] = {
            "status-code": reply.status,
            "statusCode": reply.status,
            "status-description": reply.description or "",
            "statusDescription": reply.description or "",
        }
        properties.update(reply.properties or {})
        response = Message(body=reply.body, correlation_id=request.id, properties=properties)
        reply_link = self._reply_link(request_link, request.reply_to)
        if reply_link is None:
            logger.warning(
                "no reply link for %s (reply_to=%r)", request_link.path, request.reply_to
            )
            return
        reply_link.send(encode_message(response), settled=True)

    @staticmethod
    def _reply_link(request_link: Link, reply_to: str | None) -> Link | None:
        candidates = [
            link
            for session in request_link.connection.sessions.values()
            for link in session.local_handles.values()
            if link.role == "sender" and link.path == request_link.path and not link.detached
        ]
        for link in candidates:
            if reply_to and link.target and link.target[0] == reply_to:
                return link
        same_session = [c for c in candidates if c.session is request_link.session]
        preferred = same_session or candidates
        return preferred[0] if preferred else None


class Broker:
    """The AMQP server plus its entity registry and fault controls (see module docstring)."""

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, credit_window: int = CREDIT_WINDOW
    ) -> None:
        self.host = host
        self.requested_port = port
        self.credit_window = credit_window
        self.connections: set[Connection] = set()
        self._handlers: dict[str, EntityHandler] = {}
        self._extensions: dict[str, Any] = {}
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stalled_until = 0.0
        self._busy_until = 0.0
        self.busy_mode = "detach"
        self._release_scheduled: set[Connection] = set()
        # How often each injected fault actually hit a client (tests assert on these).
        self.fault_hits: Counter[str] = Counter()
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, self.host, self.requested_port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("amqp test broker listening on %s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        # Aborted connections finish on their own; cancel only what is still stuck after that
        # (cancelling a stream handler task makes asyncio log a spurious error).
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, reader, writer)
        self.connections.add(connection)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await connection.run()
        finally:
            if task is not None:
                self._tasks.discard(task)

    # -- threading -------------------------------------------------------------------
    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(*args) on the broker loop and return its result (from any thread)."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            return fn(*args)
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(timeout=30)

    def safe_call(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call a synchronous handler hook; a failing hook is logged, not fatal."""
        try:
            fn(*args)
        except Exception:
            logger.exception("entity hook %s failed", getattr(fn, "__qualname__", fn))

    # -- registry --------------------------------------------------------------------
    def register(self, prefix: str, handler: EntityHandler) -> None:
        self.call(self._handlers.__setitem__, normalise_address(prefix).lower(), handler)

    def unregister(self, prefix: str) -> None:
        self.call(self._handlers.pop, normalise_address(prefix).lower(), None)

    def add_extension(self, name: str, admin: Any) -> None:
        self._extensions[name] = admin

    def extension(self, name: str) -> Any:
        return self._extensions[name]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        for admin in self.__dict__.get("_extensions", {}).values():
            if hasattr(admin, name):
                return getattr(admin, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def _lookup(self, path: str) -> EntityHandler | None:
        parts = path.lower().split("/")
        for i in range(len(parts), 0, -1):
            handler = self._handlers.get("/".join(parts[:i]))
            if handler is not None:
                return handler
        return None

    def is_service_node(self, path: str) -> bool:
        return path == "$cbs" or path == "$management" or path.endswith("/$management")

    def resolve(self, path: str) -> EntityHandler | None:
        if path == "$cbs":
            return _RequestResponseNode(self, None)
        if path == "$management":
            return _RequestResponseNode(self, self._handlers.get("$management"))
        if path.endswith("/$management"):
            return _RequestResponseNode(self, self._lookup(path[: -len("/$management")]))
        return self._lookup(path)

    # -- faults ------------------------------------------------------------------------
    def drop_connections(self) -> int:
        """Abort every client TCP connection; returns how many were dropped."""

        def drop() -> int:
            connections = list(self.connections)
            for connection in connections:
                connection.abort()
            self.fault_hits["dropped_connections"] += len(connections)
            return len(connections)

        return self.call(drop)

    def fault_count(self, name: str) -> int:
        return self.call(lambda: self.fault_hits[name])

    def stall(self, seconds: float) -> None:
        """Stop reading and answering on every connection for `seconds`."""

        def set_stall() -> None:
            self._stalled_until = time.monotonic() + seconds

        self.call(set_stall)

    def server_busy(self, seconds: float, mode: str = "detach") -> None:
        """Answer "server busy" (`com.microsoft:server-busy`) for `seconds`: entity attaches are
        refused (attach, then detach with that error), and an entity transfer either gets its
        link detached with that error (mode "detach") or is settled as rejected with it (mode
        "reject"). Measured with azure-eventhub 5.15: consumers retry the refused attach and
        carry on; producers raise EventDataSendError in both modes (no retry to success)."""
        if mode not in ("detach", "reject"):
            raise ValueError(f"mode must be 'detach' or 'reject', not {mode!r}")

        def set_busy() -> None:
            self._busy_until = time.monotonic() + seconds
            self.busy_mode = mode

        self.call(set_busy)

    def clear_faults(self) -> None:
        def clear() -> None:
            self._stalled_until = 0.0
            self._busy_until = 0.0
            for connection in list(self.connections):
                connection.release_held()

        self.call(clear)

    def stalled(self) -> bool:
        return time.monotonic() < self._stalled_until

    def is_busy(self) -> bool:
        return time.monotonic() < self._busy_until

    async def wait_while_stalled(self) -> None:
        while self.stalled():
            await asyncio.sleep(max(0.01, self._stalled_until - time.monotonic()))

    def schedule_release(self, connection: Connection) -> None:
        if connection in self._release_scheduled or self._loop is None:
            return
        self._release_scheduled.add(connection)

        async def release() -> None:
            await self.wait_while_stalled()
            self._release_scheduled.discard(connection)
            connection.release_held()

        task = self._loop.create_task(release())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class BrokerThread:
    """Runs a Broker on its own event loop in a daemon thread (for pytest fixtures and the CLI
    can use it too). Use as a context manager or call start()/stop()."""

    def __init__(self, broker: Broker, setup: Callable[[Broker], None] | None = None) -> None:
        self.broker = broker
        self._setup = setup
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="amqp-test-broker", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.broker.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.broker.stop())
        self._loop.close()

    def start(self, timeout: float = 10.0) -> Broker:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"AMQP test broker did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(
                f"AMQP test broker failed to start: {self._error!r}"
            ) from self._error
        if self._setup is not None:
            self._setup(self.broker)
        return self.broker

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "Broker",
    "BrokerThread",
    "EntityHandler",
    "IncomingDelivery",
    "Link",
    "LinkRefused",
    "ManagementReply",
    "ManagementRequest",
    "OutgoingDelivery",
]
