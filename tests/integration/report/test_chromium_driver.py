"""The browser check can fail: what a broken page does is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.browser.chromium import Chromium

pytestmark = pytest.mark.integration

BROKEN = """<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>
<img src="http://127.0.0.1:9/remote.png">
<script>
console.error("drawing failed");
console.warn("deprecated option");
setTimeout(() => { throw new Error("uncaught later"); }, 0);
</script></body></html>
"""


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    # Console and exception events arrive after the load event; wait for them, bounded.
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def test_console_errors_exceptions_and_outside_requests_are_recorded(
    tmp_path: Path,
) -> None:
    page_path = tmp_path / "broken.html"
    page_path.write_text(BROKEN)
    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open(page_path.as_uri())
        await until(lambda: len(page.log.errors) >= 3)
        log = page.log
        await page.close()
    assert "console.error: drawing failed" in log.errors
    assert any("uncaught later" in error for error in log.errors), log.errors
    assert any(error.startswith("log error:") and "remote.png" in error for error in log.errors)
    assert "console.warning: deprecated option" in log.warnings
    assert log.requests == [page_path.as_uri(), "http://127.0.0.1:9/remote.png"]
