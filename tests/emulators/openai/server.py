"""An Azure OpenAI chat-completions endpoint for tests: ``POST
/openai/deployments/{deployment}/chat/completions?api-version=...`` with an ``api-key`` header,
answering as ``script.directive`` says, in a thread of its own (``with JudgeServer() as s``).

Every request is logged (``requests``) so tests can count judge calls per document and
evaluator; ``wait_for`` waits on the log instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.emulators.openai import script

logger = logging.getLogger(__name__)

START_TIMEOUT = 10.0
DEFAULT_KEY = "judge-test-key"
DEFAULT_RETRY_AFTER_S = 0.01
# Holding a "timeout" request this long is longer than any test's call timeout; the server's
# stop releases held requests at once.
DEFAULT_HOLD_S = 30.0


@dataclass(frozen=True)
class JudgeRequest:
    deployment: str
    api_version: str
    trait: str
    doc: str | None
    action: script.Action
    status: int


class JudgeServer:
    """The judge. ``prompt_tokens``/``completion_tokens`` are reported per answered call."""

    def __init__(
        self,
        *,
        key: str = DEFAULT_KEY,
        prompt_tokens: int = 90,
        completion_tokens: int = 10,
        retry_after_s: float = DEFAULT_RETRY_AFTER_S,
        hold_s: float = DEFAULT_HOLD_S,
        host: str = "127.0.0.1",
    ) -> None:
        self.key = key
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.retry_after_s = retry_after_s
        self.hold_s = hold_s
        self.host = host
        self.port = 0
        self._log: list[JudgeRequest] = []
        self._throttled_once: set[str] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release: asyncio.Event | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def requests(self) -> list[JudgeRequest]:
        with self._changed:
            return list(self._log)

    def reset(self) -> None:
        with self._changed:
            self._log.clear()
            self._throttled_once.clear()

    def wait_for(self, predicate: Callable[[list[JudgeRequest]], bool], timeout: float) -> bool:
        """Wait until ``predicate(requests)`` holds; False when ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(list(self._log)):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> JudgeServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # reported to start() below
                errors.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._close())
            loop.close()

        self._thread = threading.Thread(target=run, name="openai-judge", daemon=True)
        self._thread.start()
        if not ready.wait(START_TIMEOUT):
            raise RuntimeError(f"judge server did not start within {START_TIMEOUT:.0f}s")
        if errors:
            raise RuntimeError("judge server failed to start") from errors[0]
        logger.info("judge server on port %d", self.port)
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._release is not None:
            loop.call_soon_threadsafe(self._release.set)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(START_TIMEOUT)
        self._loop = None
        self._thread = None

    def __enter__(self) -> JudgeServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- the server (loop thread) -------------------------------------------------------------

    async def _serve(self) -> None:
        self._release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/openai/deployments/{deployment}/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def _close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        deployment = request.match_info["deployment"]
        api_version = request.query.get("api-version", "")
        if not api_version:
            return _error(400, "MissingApiVersionParameter", "api-version is required")
        if request.headers.get("api-key") != self.key:
            return _error(401, "401", "Access denied due to invalid subscription key.")
        body: dict[str, Any] = await request.json()
        messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
        prompt = " ".join(str(m.get("content", "")) for m in messages)
        order = script.directive(prompt)
        status = 200
        if order.action == "throttle" or (
            order.action == "throttle-once" and self._first_throttle(prompt)
        ):
            status = 429
        self._record(
            JudgeRequest(
                deployment, api_version, script.trait(prompt), order.doc, order.action, status
            )
        )
        if status == 429:
            return _error(
                429,
                "429",
                "Requests to the ChatCompletions operation have exceeded the rate limit.",
                {"Retry-After": str(self.retry_after_s)},
            )
        if order.action == "timeout":
            assert self._release is not None
            try:
                async with asyncio.timeout(self.hold_s):
                    await self._release.wait()
            except TimeoutError:
                pass
        if order.action == "malformed":
            content = script.MALFORMED_CONTENT
        else:
            content = script.answer_content(order.score)
        return web.json_response(self._completion(deployment, content))

    def _first_throttle(self, prompt: str) -> bool:
        with self._changed:
            if prompt in self._throttled_once:
                return False
            self._throttled_once.add(prompt)
            return True

    def _record(self, entry: JudgeRequest) -> None:
        with self._changed:
            self._log.append(entry)
            self._changed.notify_all()

    def _completion(self, deployment: str, content: str) -> dict[str, Any]:
        with self._changed:
            number = len(self._log)
        return {
            "id": f"chatcmpl-{number}",
            "object": "chat.completion",
            "created": 0,
            "model": deployment,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens,
            },
        }


def _error(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )
