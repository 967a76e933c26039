"""A small AMQP 1.0 broker for tests: the TCP server, its entity registry, CBS and fault
injection.

The broker owns the protocol (`connection.py` reads and answers frames, `links.py` keeps links
and sessions); entities (Event Hubs hubs, Service Bus queues/topics) are plug-ins written against
`entity.py`, whose docstring is the plug-in interface. The broker runs on one asyncio loop; every
callback runs on that loop, and the admin methods on `Broker` may be called from any thread (they
hop onto the loop with `Broker.call`).

Registration
    `broker.register(prefix, handler)`: the handler serves every address whose path is `prefix`
    or starts with `prefix + "/"` (case-insensitive, longest registered prefix wins). Addresses
    are normalised first: `amqps://host:port/a/b` → `a/b`. `broker.unregister(prefix)` removes it.
    `broker.add_extension(name, admin)`: an admin object (e.g. the Service Bus model) whose public
    attributes become reachable as `broker.<attr>` (so fixtures expose `create_queue` and friends
    without this file knowing them); `broker.extension(name)` returns it.

Fault injection (admin, any thread): `drop_connections()`, `stall(seconds)`,
`server_busy(seconds, mode="detach"|"reject")`, `clear_faults()`; `fault_count(name)` says
how often a fault hit a client ("dropped_connections", "server_busy_attach",
"server_busy_transfer"). Entities may consult `broker.is_busy()` themselves. CBS (`$cbs`)
accepts every put-token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from .connection import MAX_FRAME_SIZE, MAX_MESSAGE_SIZE, Connection
from .entity import (
    SERVER_BUSY,
    EntityHandler,
    IncomingDelivery,
    LinkRefused,
    ManagementReply,
    ManagementRequest,
    OutgoingDelivery,
    normalise_address,
)
from .links import SESSION_WINDOW, Link, Session
from .nodes import RequestResponseNode

logger = logging.getLogger(__name__)

T = TypeVar("T")

CREDIT_WINDOW = 1000


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
        self._extensions: dict[str, object] = {}
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

    def add_extension(self, name: str, admin: object) -> None:
        self._extensions[name] = admin

    def extension(self, name: str) -> object:
        """The admin object registered under `name` (KeyError if none); callers narrow it with
        isinstance to the type they registered."""
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
            return RequestResponseNode(self, None)
        if path == "$management":
            return RequestResponseNode(self, self._handlers.get("$management"))
        if path.endswith("/$management"):
            return RequestResponseNode(self, self._lookup(path[: -len("/$management")]))
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
    "CREDIT_WINDOW",
    "MAX_FRAME_SIZE",
    "MAX_MESSAGE_SIZE",
    "SERVER_BUSY",
    "SESSION_WINDOW",
    "Broker",
    "BrokerThread",
    "Connection",
    "EntityHandler",
    "IncomingDelivery",
    "Link",
    "LinkRefused",
    "ManagementReply",
    "ManagementRequest",
    "OutgoingDelivery",
    "Session",
    "normalise_address",
]
