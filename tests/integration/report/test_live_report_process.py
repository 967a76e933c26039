"""The live ``/report`` is built in a child process, one page at a time: a processor asked for
seven pages at once builds them one after another in ``evalstream.report_worker`` children
(never two at once, never in its own process), keeps four waiting and refuses the rest with
Retry-After."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import psutil
import pytest

from evalstream.live_report import BUSY_RETRY_AFTER_S, MAX_WAITING
from tests.integration.processor_harness import wait_until
from tests.integration.report.test_live_report_browser import _free_port, serving_processor

pytestmark = pytest.mark.integration

REQUESTS = MAX_WAITING + 3


def _report_children(pid: int) -> int:
    found = 0
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "evalstream.report_worker" in child.cmdline():
                found += 1
        except psutil.NoSuchProcess:
            continue
    return found


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


async def test_pages_are_built_one_at_a_time_in_a_child_process(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = serving_processor(tmp_path, port)
    try:
        wait_until(lambda: _ready(url), timeout=60, what="the processor's /healthz")
        seen: list[int] = []
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                seen.append(_report_children(process.pid))
                await asyncio.sleep(0.005)

        async with httpx.AsyncClient(timeout=120) as client:
            watcher = asyncio.create_task(watch())
            head = await client.head(f"{url}/report")
            answers = await asyncio.gather(*(client.get(f"{url}/report") for _ in range(REQUESTS)))
            done.set()
            await watcher
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()[-2000:]
    assert head.status_code == 200 and head.headers["content-type"].startswith("text/html")
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [200] * (MAX_WAITING + 1) + [503] * 2, statuses
    for answer in answers:
        if answer.status_code == 200:
            assert "evalstream report" in answer.text
        else:
            assert answer.headers["retry-after"] == str(BUSY_RETRY_AFTER_S)
            assert "waiting already" in answer.text
    # Every page came from a child, and never two children at once.
    assert max(seen) == 1, sorted(set(seen))


def test_policies_the_catalogue_refuses_make_the_page_unavailable_naming_the_setting(
    tmp_path: Path,
) -> None:
    # Not scheduled in process, the processor runs (with a warning at start); before, its
    # /report priced tokens from the refused policy's usage params and said nothing.
    config = tmp_path / "evalstream.toml"
    config.write_text(
        "[coldpath]\nschedule_in_process = false\n"
        '[[coldpath.policies]]\nname = "costs"\n'
        '[[coldpath.policies.metrics]]\nmetric = "usage"\n'
        "params = { prices = { gpt = { input_per_1k = 1.0, output_per_1k = 2.0 } } }\n"
        '[[coldpath.policies.metrics]]\nmetric = "latenzy"\n'
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = serving_processor(tmp_path, port, "--config", str(config))
    try:
        wait_until(lambda: _ready(url), timeout=60, what="the processor's /healthz")
        answer = httpx.get(f"{url}/report", timeout=120)
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()[-2000:]
    assert answer.status_code == 503, answer.text[:200]
    assert answer.text.startswith(
        "the report cannot be built now: coldpath.policies[0].metrics[1].metric: unknown metric "
        "'latenzy'"
    )
    assert "WARNING evalstream.coldpath_schedule: cold path policies refused" in errors.decode()
