"""gather over the embedded adapters: what the report shows of stored telemetry, breaches and
evaluation results, read one page at a time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from alerts.config import SubscriptionSpec
from alerts.sqlite_bus import SqliteAlertPublisher
from report import ReportRequest, gather, render_html
from report.data import ReportData, incidents
from report.prices import PriceTable, TokenPrice
from report.sqlite_breaches import SqliteBreachLog
from schemas import AppDirectory, EvaluationResult, TelemetryDocument, Thresholds, Window
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore
from tests.unit.report.docs import T0, breach, doc

HOUR = timedelta(hours=1)


def test_an_incident_joins_its_opened_and_resolved_messages() -> None:
    opened = breach("a", T0, breach_id="x")
    resolved = breach("a", T0, T0 + timedelta(minutes=5), breach_id="x")
    still_open = breach("a", T0 + timedelta(minutes=1), breach_id="y")
    over_before = breach("a", T0 - 2 * HOUR, T0 - HOUR, breach_id="z")
    found = incidents([resolved, opened, still_open, over_before], T0, T0 + HOUR)
    assert [(i.breach_id, i.resolved_at) for i in found] == [
        ("x", T0 + timedelta(minutes=5)),
        ("y", None),
    ]


def result(app_id: str, start: datetime, p95: float, status: str) -> EvaluationResult:
    window = Window(start=start, end=start + timedelta(minutes=1))
    return EvaluationResult(
        id=f"{app_id}-{start.isoformat()}",
        pk=f"{app_id}:{start.date().isoformat()}",
        app_id=app_id,
        policy="demo",
        policy_version=1,
        metric="latency",
        metric_version=1,
        window=window,
        values={"p95": p95},
        sample_size=50,
        status=status,  # type: ignore[arg-type]
        thresholds={"p95": Thresholds.model_validate({"warning": {"max": 1000.0}})},
        manifest_id="m",
        computed_at=start,
    )


class CountingStore(SqliteStore):
    """Records the size of every page handed out."""

    pages: list[int]

    async def telemetry_window(  # type: ignore[override]
        self, app_ids: Sequence[str], start: datetime, end: datetime, page_size: int = 1000
    ) -> AsyncIterator[list[TelemetryDocument]]:
        async for page in super().telemetry_window(app_ids, start, end, page_size):
            self.pages.append(len(page))
            yield page


@pytest.fixture
async def stored(tmp_path: Path) -> Path:
    documents = [
        doc(app, T0 + timedelta(seconds=s), latency_ms=100.0 + s, tokens=(5, 5), model_id="m",
            number=s)
        for app in ("a", "b")
        for s in range(0, 600, 2)
    ]  # fmt: skip
    async with SqliteStore(tmp_path / "store.db") as store:
        await store.write(documents, [])
    async with SqliteEvaluationStore(tmp_path / "store.db") as evaluations:
        await evaluations.upsert_results(
            [result("a", T0, 500.0, "ok"), result("a", T0 + timedelta(minutes=1), 1500.0,
                                                    "warning")]
        )  # fmt: skip
    async with SqliteAlertPublisher(tmp_path / "alerts.db", [SubscriptionSpec("all")]) as bus:
        await bus.publish(
            [breach("a", T0 + timedelta(minutes=1), message="<img src=x onerror=alert(1)>")]
        )
    return tmp_path


async def test_gather_reads_every_app_page_by_page(stored: Path) -> None:
    request = ReportRequest(start=T0, end=T0 + HOUR, page_size=50, max_buckets=60)
    async with (
        CountingStore(stored / "store.db") as telemetry,
        SqliteEvaluationStore(stored / "store.db") as evaluations,
        SqliteBreachLog(stored / "alerts.db") as log,
    ):
        telemetry.pages = []
        data = await gather(
            request,
            telemetry=telemetry,
            evaluations=evaluations,
            breaches=log,
            apps=AppDirectory(),
            prices=lambda app: PriceTable({"m": TokenPrice(1.0, 1.0)}) if app == "a" else None,
        )
    assert [s.app_id for s in data.apps] == ["a", "b"]
    assert telemetry.pages == [50] * 12  # 300 documents per app, never more than a page held
    a, b = data.apps
    # An hour in at most 60 buckets: 5 minutes each, whatever span the telemetry has.
    assert a.width_s == b.width_s == 300 and a.requests == b.requests == 300
    assert a.priced and not b.priced
    assert float(a.cost.sum()) == pytest.approx(300 * 10 / 1000)
    assert [i.app_id for i in data.incidents] == ["a"]
    assert [r.status for r in data.evaluations] == ["ok", "warning"]
    assert data.notes == []

    page = render_html(data)
    # Latency, errors and usage per app (no scores reported), incidents, one evaluation value.
    assert page.count('class="plotly-graph-div"') == 2 * 3 + 1 + 1
    assert page.count("No scores reported.") == 2
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script src=" not in page  # plotly.js inlined, nothing fetched


async def gathered(stored: Path, *requests: ReportRequest) -> list[ReportData]:
    """What ``gather`` finds for each request in the stored data, without a breach log."""
    async with (
        SqliteStore(stored / "store.db") as telemetry,
        SqliteEvaluationStore(stored / "store.db") as evaluations,
    ):
        return [
            await gather(
                request,
                telemetry=telemetry,
                evaluations=evaluations,
                breaches=None,
                apps=AppDirectory(),
            )
            for request in requests
        ]


async def test_an_app_without_telemetry_and_a_backend_without_history_are_noted(
    stored: Path,
) -> None:
    (data,) = await gathered(
        stored, ReportRequest(start=T0, end=T0 + HOUR, app_ids=("a", "nobody"))
    )
    assert [s.app_id for s in data.apps] == ["a"]
    assert data.incidents == []
    assert any(note.startswith("nobody: no telemetry") for note in data.notes)
    assert any(note.startswith("breach timeline: not available") for note in data.notes)


async def test_without_named_apps_a_report_shows_a_bounded_number_and_says_so(
    stored: Path,
) -> None:
    data, named = await gathered(
        stored,
        ReportRequest(start=T0, end=T0 + HOUR, max_apps=1),
        ReportRequest(start=T0, end=T0 + HOUR, max_apps=1, app_ids=("a", "b")),
    )
    assert [s.app_id for s in data.apps] == ["a"]
    assert any(
        note.startswith("2 apps have telemetry in the range; the first 1") for note in data.notes
    )
    # Named apps are the reader's choice: all of them.
    assert [s.app_id for s in named.apps] == ["a", "b"]


def test_a_request_needs_an_aware_non_empty_range() -> None:
    with pytest.raises(ValueError, match="not after"):
        ReportRequest(start=T0, end=T0)
    with pytest.raises(ValueError, match="timezone"):
        ReportRequest(start=T0.replace(tzinfo=None), end=T0.replace(tzinfo=None) + HOUR)


def test_the_help_names_the_default_number_of_apps() -> None:
    from typer.testing import CliRunner

    from evalstream.cli import app
    from report.data import DEFAULT_MAX_APPS

    shown = CliRunner().invoke(app, ["report", "--help"], env={"COLUMNS": "300"}).output
    assert f"the first {DEFAULT_MAX_APPS} by name" in shown
