"""Fixtures of the alerts tests: a controllable clock, a bus file in a tmp dir and a webhook
server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from tests.unit.alerts.factories import FakeClock

# Where a Slack-style hook keeps its credential: in the path, and here in the query too.
HOOK_SECRETS = ("T0SECRET", "B0SECRET", "XXsecretXXpathXX", "s3cret-token")
HOOK_PATH = "/services/T0SECRET/B0SECRET/XXsecretXXpathXX?token=s3cret-token"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """``alerts listen`` run in-process sets up logging (a handler on the runner's stderr):
    the next test gets the root logger as it was."""
    root = logging.getLogger()
    quiet = [logging.getLogger(name) for name in ("azure", "httpx")]
    saved = root.handlers[:], root.level, [logger.level for logger in quiet]
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    for logger, level in zip(quiet, saved[2], strict=True):
        logger.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def bus_path(tmp_path: Path) -> Path:
    return tmp_path / "alerts.db"


@dataclass
class Hook:
    url: str
    statuses: deque[int] = field(default_factory=deque)  # answered in order, then 200
    delay_s: float = 0.0
    requests: list[tuple[Mapping[str, str], bytes]] = field(default_factory=list)


@pytest.fixture
async def hook() -> AsyncIterator[Hook]:
    """A webhook at ``HOOK_PATH`` whose error answers quote the request's path and query, as
    many servers' 404 and 500 pages do."""
    state = Hook(url="")

    async def receive(request: web.Request) -> web.Response:
        state.requests.append((request.headers.copy(), await request.read()))
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        status = state.statuses.popleft() if state.statuses else 200
        headers = {"Retry-After": "0"} if status == 429 else {}
        text = f"status {status} for POST {request.path_qs}"
        return web.Response(status=status, text=text, headers=headers)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}{HOOK_PATH}"
    try:
        yield state
    finally:
        await runner.cleanup()
