"""The broker's own request/response nodes: `$cbs` (every put-token is accepted) and the
`$management` nodes that route requests to an entity's `on_management` hook."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from proton import Described, Message

from . import codec
from .entity import (
    EntityHandler,
    IncomingDelivery,
    ManagementReply,
    ManagementRequest,
)
from .links import Link, str_keys
from .message import decode_message, encode_message

if TYPE_CHECKING:
    from .broker import Broker

logger = logging.getLogger(__name__)


class RequestResponseNode(EntityHandler):
    """`$cbs` and `$management` nodes: requests on the client's sender link, replies on the
    broker-sender link attached to the same node address."""

    def __init__(self, broker: Broker, target: EntityHandler | None) -> None:
        self.broker = broker
        self.target = target

    async def on_transfer(self, link: Link, delivery: IncomingDelivery) -> Described | None:
        message = decode_message(delivery.payload)
        props = str_keys(message.properties)
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
