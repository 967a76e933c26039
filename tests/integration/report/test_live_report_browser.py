"""The live ``/report`` of a processor running ``--simulate`` with a latency regression, opened
in headless Chromium: no console errors, nothing fetched beyond the page, every chart drawn,
the simulated incident in the table. Screenshot and page in test-artifacts/report/."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.browser.chromium import Chromium
from tests.integration.processor_harness import IN_PROCESS, wait_until
from tests.integration.report.test_report_browser import ALL_DRAWN, ARTIFACTS, CHART_STATES, ROOT

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def _breach_opened(url: str) -> bool:
    try:
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.TransportError:
        return False
    return 'evalstream_breaches_total{severity="warning",state="opened"}' in metrics


def serving_processor(tmp_path: Path, port: int, *args: str) -> subprocess.Popen[bytes]:
    """``evalstream process`` in one process, its ops and /report on ``port`` (stderr kept)."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "evalstream", "process", *args,
            "--data-dir", str(tmp_path / "data"), "--ingest-port", str(port),
        ],
        cwd=ROOT,
        env={**os.environ, **IN_PROCESS, "EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


async def test_the_live_report_shows_the_simulated_incident(tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = serving_processor(
        tmp_path, port, "--simulate", "--apps", "2", "--rate", "500",
        "--incident", "latency_regression:app-001@5+60x4",
    )  # fmt: skip
    try:
        wait_until(lambda: _breach_opened(url), timeout=90, what="the breach", interval=0.5)
        async with Chromium(tmp_path / "profile") as browser:
            page = await browser.open(f"{url}/report")
            drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
            charts = await page.evaluate(CHART_STATES)
            incidents = await page.evaluate(
                "[...document.querySelectorAll('table.incidents tbody tr')]"
                ".map(row => [...row.cells].map(cell => cell.textContent))"
            )
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = await page.screenshot(ARTIFACTS / "live-report.png")
            html = await page.evaluate("document.documentElement.outerHTML")
            (ARTIFACTS / "live-report.html").write_text(html, encoding="utf-8")
            log = page.log
            await page.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode()[-2000:]
    assert log.errors == [], log.errors
    assert log.requests == [f"{url}/report"], log.requests
    assert drawn, charts
    kinds = [chart["kind"] for chart in charts]
    assert kinds.count("latency") == 2, kinds
    assert all(chart["svg"] > 0 and chart["traces"] > 0 for chart in charts), charts
    assert any(
        row[0] == "app-001" and row[2] == "drift" and row[3] == "latency_ms" for row in incidents
    ), incidents
    assert screenshot.stat().st_size > 50_000
