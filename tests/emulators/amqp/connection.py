"""One client connection of the test broker: protocol header, SASL, then the frame loop that
turns performatives into session, link and entity-handler calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
from typing import TYPE_CHECKING, Any

from proton import Described, ubyte, uint, ulong, ushort

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
from .entity import SERVER_BUSY, IncomingDelivery, LinkRefused
from .links import SESSION_WINDOW, Link, Session

if TYPE_CHECKING:
    from .broker import Broker

logger = logging.getLogger(__name__)

MAX_FRAME_SIZE = 65536
MAX_MESSAGE_SIZE = 1024 * 1024


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
