from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from evalstream import live_report
from evalstream.live_report import LiveReport
from evalstream.settings import Settings


def test_a_head_request_is_answered_without_building_the_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[Any] = []

    async def recorded(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        raise AssertionError("nothing is built for a HEAD request")

    # Either way of building a page: in this process, or a child's.
    monkeypatch.setattr("evalstream.wiring.report.build_report", recorded)
    monkeypatch.setattr(live_report, "start_worker", recorded, raising=False)
    client = TestClient(Starlette(routes=LiveReport(Settings()).routes))
    answer = client.head("/report?from=2h")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert built == []
    # Its query is checked as a GET's is.
    assert client.head("/report?from=yesterday-ish").status_code == 400
    assert built == []
