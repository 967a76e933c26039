"""``evalstream evaluations`` shows app ids as they are: text, not rich markup."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from evalstream.cli import app
from schemas import EvaluationResult, Window
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore

START = datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_an_app_id_that_reads_as_markup_is_shown_as_it_is(tmp_path: Path) -> None:
    # The app id pattern allows ':' and '.': rich drew "app:fire:" as "app🔥", and an operator
    # who copied it into --app found nothing.
    result = EvaluationResult(
        id="r",
        pk=f"app:fire::{START.date().isoformat()}",
        app_id="app:fire:",
        policy="quality",
        policy_version=1,
        metric="latency",
        metric_version=1,
        window=Window(start=START, end=START + timedelta(hours=1)),
        values={"p95": 120.0},
        sample_size=50,
        status="ok",
        manifest_id="m",
        computed_at=START,
    )

    async def write() -> None:
        async with SqliteStore(tmp_path / "store.db"):
            pass
        async with SqliteEvaluationStore(tmp_path / "store.db") as store:
            await store.upsert_results([result])

    asyncio.run(write())
    answer = CliRunner().invoke(
        app, ["evaluations", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert answer.exit_code == 0, answer.output
    assert "app:fire:" in answer.output and "\U0001f525" not in answer.output, answer.output
    assert "p95=120" in answer.output
