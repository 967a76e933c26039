"""Headless Chromium (Debian's ``chromium`` package) driven over the Chrome DevTools Protocol.

``Chromium`` starts the browser with a throw-away profile and a DevTools port chosen by the
browser itself; ``Chromium.open`` loads a page in a fresh tab and records, from before the
first byte, what the page wrote to its console, the exceptions it did not catch, the browser's
own error log entries and every URL it requested. ``Page`` then evaluates JavaScript, waits for
a condition of the DOM and takes full-page screenshots. The connection is one WebSocket
(aiohttp) with flat sessions: each command carries the session of its tab.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp

EXECUTABLE = "chromium"
STARTUP_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_S = 30.0
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
# Switched off: everything a fresh profile would fetch or show on its own (component updates,
# safe-browsing lists, first-run pages), so the only requests are the page's.
_FLAGS = (
    "--headless",
    "--no-sandbox",  # root on CI; the page is our own file
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)


class BrowserError(Exception):
    """The browser did not start, a DevTools command failed, or it timed out."""


def executable() -> str:
    found = shutil.which(EXECUTABLE)
    if found is None:
        raise BrowserError(
            f"{EXECUTABLE} is not installed; `make install` installs it (apt-get install chromium)"
        )
    return found


@dataclass
class PageLog:
    """What a page did that a test may want to forbid."""

    console: list[tuple[str, str]] = field(default_factory=list)  # (type, text)
    exceptions: list[str] = field(default_factory=list)
    log_entries: list[tuple[str, str]] = field(default_factory=list)  # (level, text)
    requests: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        """Console errors and assertions, uncaught exceptions and error log entries."""
        return [
            *(f"console.{k}: {text}" for k, text in self.console if k in ("error", "assert")),
            *(f"exception: {text}" for text in self.exceptions),
            *(f"log {level}: {text}" for level, text in self.log_entries if level == "error"),
        ]

    @property
    def warnings(self) -> list[str]:
        return [
            *(f"console.warning: {text}" for kind, text in self.console if kind == "warning"),
            *(f"log warning: {text}" for level, text in self.log_entries if level == "warning"),
        ]


class _Connection:
    """One DevTools WebSocket: commands matched to answers by id, events to their session."""

    def __init__(self, websocket: aiohttp.ClientWebSocketResponse) -> None:
        self._websocket = websocket
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[str, list[asyncio.Queue[tuple[str, dict[str, Any]]]]] = {}
        self._reader = asyncio.create_task(self._read())

    def listen(self, session_id: str) -> asyncio.Queue[tuple[str, dict[str, Any]]]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._listeners.setdefault(session_id, []).append(queue)
        return queue

    async def send(
        self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params or {}}
        if session_id is not None:
            message["sessionId"] = session_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message["id"]] = answer
        await self._websocket.send_json(message)
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT_S):
                reply = await answer
        except TimeoutError as exc:
            raise BrowserError(f"{method}: no answer in {COMMAND_TIMEOUT_S} s") from exc
        finally:
            self._pending.pop(message["id"], None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _read(self) -> None:
        try:
            async for message in self._websocket:
                if message.type is not aiohttp.WSMsgType.TEXT:
                    continue
                data = message.json()
                if "id" in data:
                    waiting = self._pending.get(data["id"])
                    if waiting is not None and not waiting.done():
                        waiting.set_result(data)
                    continue
                for queue in self._listeners.get(data.get("sessionId", ""), []):
                    queue.put_nowait((data["method"], data.get("params", {})))
        finally:
            closed = BrowserError("the DevTools connection closed")
            for waiting in self._pending.values():
                if not waiting.done():
                    waiting.set_exception(closed)

    async def close(self) -> None:
        await self._websocket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


def _remote_text(params: dict[str, Any]) -> str:
    parts = []
    for argument in params.get("args", []):
        value = argument.get("value", argument.get("description", argument.get("type")))
        parts.append(str(value))
    return " ".join(parts)


class Page:
    """A tab with a page loaded. ``log`` keeps filling while the page runs."""

    def __init__(self, connection: _Connection, session_id: str, target_id: str) -> None:
        self._connection = connection
        self.session_id = session_id
        self.target_id = target_id
        self.log = PageLog()
        self._events = connection.listen(session_id)
        self._loaded = asyncio.Event()
        self._recorder = asyncio.create_task(self._record())

    async def _record(self) -> None:
        while True:
            method, params = await self._events.get()
            if method == "Runtime.consoleAPICalled":
                self.log.console.append((params.get("type", ""), _remote_text(params)))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                description = details.get("exception", {}).get("description")
                self.log.exceptions.append(str(description or details.get("text", details)))
            elif method == "Log.entryAdded":
                entry = params.get("entry", {})
                self.log.log_entries.append(
                    (entry.get("level", ""), f"{entry.get('text', '')} {entry.get('url', '')}")
                )
            elif method == "Network.requestWillBeSent":
                self.log.requests.append(params.get("request", {}).get("url", ""))
            elif method == "Page.loadEventFired":
                self._loaded.set()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self._connection.send(method, params, self.session_id)

    async def navigate(self, url: str, timeout_s: float) -> None:
        self._loaded.clear()
        answer = await self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url}: {answer['errorText']}")
        try:
            async with asyncio.timeout(timeout_s):
                await self._loaded.wait()
        except TimeoutError as exc:
            raise BrowserError(f"{url} did not finish loading in {timeout_s} s") from exc

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (JSON-serialisable; promises are awaited)."""
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            raise BrowserError(f"evaluating {expression[:80]!r}: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float) -> bool:
        """Whether ``expression`` became truthy within ``timeout_s``; it is evaluated in the
        page once per animation frame, so this returns as soon as the DOM satisfies it."""
        script = (
            "new Promise(resolve => {"
            f" const deadline = performance.now() + {timeout_s * 1000:.0f};"
            f" const check = () => {{ if ({expression}) resolve(true);"
            " else if (performance.now() > deadline) resolve(false);"
            " else requestAnimationFrame(check); };"
            " check(); })"
        )
        return bool(await self.evaluate(script))

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page, not only the viewport."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics["cssContentSize"]
        answer = await self.send(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {
                    "x": 0,
                    "y": 0,
                    "width": size["width"],
                    "height": size["height"],
                    "scale": 1,
                },
            },
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(answer["data"]))
        return path

    async def close(self) -> None:
        self._recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._recorder
        with contextlib.suppress(BrowserError):
            await self._connection.send("Target.closeTarget", {"targetId": self.target_id})


class Chromium:
    """The browser process and its DevTools connection; an async context manager."""

    def __init__(self, profile_dir: Path, *, width: int = 1280, height: int = 900) -> None:
        self.profile_dir = profile_dir
        self.width = width
        self.height = height
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._connection: _Connection | None = None
        self._stderr_tail: deque[bytes] = deque(maxlen=40)
        self._drain: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            executable(),
            *_FLAGS,
            f"--window-size={self.width},{self.height}",
            f"--user-data-dir={self.profile_dir}",
            "--remote-debugging-port=0",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group: the renderer and helper processes go with it on exit.
            start_new_session=True,
        )
        try:
            url = await self._devtools_url()
            self._drain = asyncio.create_task(self._drain_stderr())
            self._session = aiohttp.ClientSession()
            websocket = await self._session.ws_connect(url, max_msg_size=0)
            self._connection = _Connection(websocket)
        except BaseException:
            await self._stop()
            raise
        return self

    async def _devtools_url(self) -> str:
        assert self._process is not None and self._process.stderr is not None
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                while line := await self._process.stderr.readline():
                    self._stderr_tail.append(line)
                    found = _LISTENING.search(line)
                    if found:
                        return found[1].decode()
        except TimeoutError:
            pass
        tail = b"".join(self._stderr_tail).decode(errors="replace")
        raise BrowserError(f"chromium did not open its DevTools port:\n{tail}")

    async def _drain_stderr(self) -> None:
        # The pipe must keep flowing or chromium blocks on a full stderr.
        assert self._process is not None and self._process.stderr is not None
        while line := await self._process.stderr.readline():
            self._stderr_tail.append(line)

    async def open(self, url: str, timeout_s: float = 30.0) -> Page:
        """A new tab at ``url``, recording from before navigation; returns after ``load``."""
        if self._connection is None:
            raise BrowserError("chromium is not running")
        target = await self._connection.send("Target.createTarget", {"url": "about:blank"})
        attached = await self._connection.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self._connection, attached["sessionId"], target["targetId"])
        for domain in ("Runtime", "Log", "Network", "Page"):
            await page.send(f"{domain}.enable")
        await page.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        await page.navigate(url, timeout_s)
        return page

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(BrowserError, aiohttp.ClientError):
                await self._connection.send("Browser.close")
            await self._connection.close()
        if self._session is not None:
            await self._session.close()
        process = self._process
        if process is not None and process.returncode is None:
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain

    @property
    def stderr_tail(self) -> str:
        return b"".join(self._stderr_tail).decode(errors="replace")
