"""`evalstream report` over telemetry that went through the real pipeline, opened in headless
Chromium: no console errors, no request leaves the file, every chart drawn, the scripted
incident on the page. The screenshot and the page are kept in test-artifacts/report/."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from evalstream.cli import app
from report import render_html
from tests.browser.chromium import Chromium
from tests.integration.processor_harness import IN_PROCESS
from tests.unit.report.docs import HOSTILE, HOSTILE_APP, hostile_report

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts" / "report"

# Per chart: its plotly div, the SVG plotly.js drew into it, and at least one drawn trace.
CHART_STATES = """
[...document.querySelectorAll('div.chart')].map(chart => ({
    kind: chart.dataset.chart,
    id: chart.querySelector('.plotly-graph-div')?.id ?? null,
    svg: chart.querySelectorAll('.plotly-graph-div svg.main-svg').length,
    traces: chart.querySelectorAll('.plotly-graph-div g.trace').length,
}))
"""
ALL_DRAWN = (
    "document.querySelectorAll('div.chart').length > 0 && "
    "[...document.querySelectorAll('div.chart')].every(c => "
    "c.querySelector('.plotly-graph-div svg.main-svg') && c.querySelector('g.trace'))"
)


def evalstream(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalstream", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
        env={**os.environ, **IN_PROCESS, "COLUMNS": "200", **env},
    )


async def drawn_and_evaluated(
    tmp_path: Path,
    report: Path,
    script: str,
    width: int | None = None,
    screenshot: str | None = None,
) -> Any:
    """Open ``report`` in headless Chromium, wait until every chart is drawn, and give what
    ``script`` finds in the page (after a screenshot to test-artifacts, if named); no console
    error on the way."""
    options = {} if width is None else {"width": width}
    async with Chromium(tmp_path / "profile", **options) as browser:
        page = await browser.open(report.as_uri())
        drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
        found = await page.evaluate(script)
        if screenshot is not None:
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            await page.screenshot(ARTIFACTS / screenshot)
        log = page.log
        await page.close()
    assert log.errors == [], log.errors
    assert drawn
    return found


def sent_processed_reported(
    data_dir: Path, events: Path, output: Path, start: str
) -> subprocess.CompletedProcess[str]:
    """``send`` the events, process them, write the report of ``--from start``; the last run."""
    for step in [
        ("send", str(events)),
        ("process", "--no-ingest", "--until-idle", "1"),
        ("report", "-o", str(output), "--from", start),
    ]:
        done = evalstream(data_dir, *step, EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="false")
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def report_of_an_incident(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two apps, 40 s of traffic that ended a few minutes ago, app-001 four times slower for
    20 s of it; stored, evaluated by the demo policy (one-minute windows), then reported."""
    data_dir = tmp_path_factory.mktemp("report")
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=4)
    steps = [
        (
            "simulate", "--apps", "2", "--count", "8000", "--start", start.isoformat(),
            "--incident", "latency_regression:app-001@15+20x4", "--no-pace",
        ),
        ("process", "--no-ingest", "--until-idle", "1"),
    ]  # fmt: skip
    for step in steps:
        done = evalstream(data_dir, *step, EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="false")
        assert done.returncode == 0, done.stderr
    evaluated = evalstream(
        data_dir, "process", "--no-ingest", "--until-idle", "2",
        EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="true",
        EVALSTREAM_COLDPATH__SCHEDULE_INTERVAL_S="0.5",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    # The command itself, in this process: one interpreter start less than a subprocess.
    output = data_dir / "report.html"
    reported = CliRunner().invoke(
        app,
        [
            "report", "-o", str(output), "--data-dir", str(data_dir),
            "--from", (start - timedelta(minutes=1)).isoformat(),
            "--to", (start + timedelta(minutes=5)).isoformat(),
        ],
    )  # fmt: skip
    assert reported.exit_code == 0, reported.output
    assert "2 apps, 8,000 requests" in reported.output, reported.output
    return output


async def test_the_report_renders_in_headless_chromium_with_the_incident(
    report_of_an_incident: Path, tmp_path: Path
) -> None:
    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open(report_of_an_incident.as_uri())
        drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
        charts = await page.evaluate(CHART_STATES)
        incidents = await page.evaluate(
            "[...document.querySelectorAll('table.incidents tbody tr')]"
            ".map(row => [...row.cells].map(cell => cell.textContent))"
        )
        # The lines the opened time takes in its cell.
        opened_lines = await page.evaluate(
            "[...document.querySelectorAll('table.incidents tbody tr')].map(row => {"
            " const range = document.createRange(); range.selectNodeContents(row.cells[6]);"
            " return range.getClientRects().length; })"
        )
        incident_axis = await page.evaluate(
            "[...document.querySelectorAll('div.chart[data-chart=incidents] .yaxislayer-above "
            "text')].map(t => t.textContent)"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        screenshot = await page.screenshot(ARTIFACTS / "report.png")
        shutil.copy(report_of_an_incident, ARTIFACTS / "report.html")
        log = page.log
        await page.close()

    assert log.errors == [], log.errors
    # Offline: the page itself is the only thing loaded.
    assert log.requests == [report_of_an_incident.as_uri()], log.requests
    assert drawn, charts
    kinds = [chart["kind"] for chart in charts]
    # Two apps × latency, errors, usage, scores; the incident timeline; evaluation charts.
    assert sorted(set(kinds)) == ["errors", "evaluation", "incidents", "latency", "scores", "usage"]
    assert kinds.count("latency") == 2, kinds
    assert all(chart["svg"] > 0 and chart["traces"] > 0 for chart in charts), charts
    # The scripted regression: app-001's latency breaches on the timeline, in the table, and
    # nothing for the healthy app.
    assert {row[0] for row in incidents} == {"app-001"}, incidents
    assert any(row[2] == "drift" and row[3] == "latency_ms" for row in incidents), incidents
    assert any(row[2] == "evaluation" for row in incidents), incidents
    assert any(label.startswith("app-001") for label in incident_axis), incident_axis
    # Opened and resolved to the second, each on one line (they had microseconds, wrapped).
    moment = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert all(moment.fullmatch(row[6]) for row in incidents), incidents
    assert opened_lines and all(lines == 1 for lines in opened_lines), opened_lines
    assert screenshot.stat().st_size > 50_000


def edge_events(start: datetime, count: int) -> str:
    """NDJSON of valid events at the edges of the contract: the largest and smallest doubles
    for latency and scores, 64-bit token counts and metadata integers."""
    largest = 1.7976931348623157e308
    lines = []
    for i in range(count):
        event = {
            "app_id": "edge",
            "timestamp": (start + timedelta(seconds=i)).isoformat(),
            "trace_id": f"t{i}",
            "status": "error" if i % 3 == 0 else "ok",
            "latency_ms": [0.0, largest, 5e-324, 123.5][i % 4],
            "tokens": {"input": 2**64 - 1, "output": 2**64 - 1 if i % 2 else 0},
            "scores": {"extreme": [largest, -largest, 5e-324, 0.5][i % 4], "usual": i / count},
            "metadata": {"big": 2**64 - 1, "small": -(2**63)},
        }
        lines.append(orjson.dumps(event).decode())
    return "\n".join(lines) + "\n"


EDGE_POLICY = """
[[coldpath.policies]]
name = "edge"
window = "PT1H"
lateness = "PT10M"
min_sample_size = 10
apps = "all"
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = { mean = { warning = { max = 300.0 } }, p95 = { warning = { max = 300.0 } } }
[[coldpath.policies.metrics]]
metric = "scores"
thresholds = { "extreme.p10" = { warning = { min = -1.0 } } }
"""
# Evaluation charts: the markers of their first trace (the app's values).
EVALUATION_POINTS = """
[...document.querySelectorAll('div.chart[data-chart=evaluation]')].map(chart =>
    chart.querySelectorAll('.scatterlayer .trace:first-child path.point').length)
"""


async def test_a_report_of_values_at_the_edges_of_the_contract_draws_every_chart(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    config = tmp_path / "edge.toml"
    config.write_text(EDGE_POLICY)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    events = tmp_path / "edge.ndjson"
    events.write_text(edge_events(hour + timedelta(minutes=10), 60))
    window = f"{hour.isoformat()}/{(hour + timedelta(hours=1)).isoformat()}"
    steps = [
        ("send", str(events)),
        ("process", "--no-ingest", "--until-idle", "1"),
        ("coldpath", "trigger", "--policy", "edge", "--window", window),
        ("report", "-o", str(tmp_path / "edge.html"),
         "--from", hour.isoformat(), "--to", (hour + timedelta(hours=2)).isoformat()),
    ]  # fmt: skip
    for step in steps:
        done = evalstream(
            data_dir, *step, EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS="false",
            EVALSTREAM_CONFIG=str(config),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert "1 apps, 60 requests" in done.stderr, done.stderr

    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open((tmp_path / "edge.html").as_uri())
        drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
        charts = await page.evaluate(CHART_STATES)
        score_names = await page.evaluate(
            "[...document.querySelectorAll('div.chart[data-chart=scores] .ytick text')]"
            ".map(t => t.textContent)"
        )
        points = await page.evaluate(EVALUATION_POINTS)
        # The observed and threshold cells of each row.
        figures = await page.evaluate(
            "[...document.querySelectorAll('table.incidents tbody tr')]"
            ".map(row => [...row.cells].slice(8, 10).map(cell => cell.textContent))"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(ARTIFACTS / "report-edge-values.png")
        log = page.log
        await page.close()

    assert log.errors == [], log.errors
    assert drawn, charts
    # Both scores drawn: the one with the largest doubles as well as the usual one.
    scores = [chart for chart in charts if chart["kind"] == "scores"]
    assert [chart["traces"] for chart in scores] == [2], charts
    assert sorted(name.split(" ")[0] for name in score_names) == ["extreme", "usual"], score_names
    # Every judged value drawn as a point, the largest doubles too (an axis padded beyond a
    # double fell back to a default range without them).
    assert points and all(count == 1 for count in points), points
    # The breaches of those values are in the table, their figures readable (not 309 digits).
    cells = [cell for row in figures for cell in row]
    assert any(cell in ("1.798e+308", "-1.798e+308") for cell in cells), figures
    assert max(len(cell) for cell in cells) < 20, figures


LONGEST_APP = "a" * 128
# Score names as producers send them: up to 64 characters, right-to-left, CJK, emoji.
SCORE_NAMES = (
    "a_long_score_name_that_goes_on_and_on_until_the_sixty_fourth_ch",
    "מדד_רלוונטיות_ארוך",
    "关联性评分指标",
    "😀emoji_score",
)


@pytest.fixture(scope="module")
def report_of_long_names(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app with the longest id and scores with long and non-Latin names, beside an app
    with a short id; five minutes of traffic, reported."""
    data_dir = tmp_path_factory.mktemp("long-names")
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    lines = []
    for i in range(120):
        event = {
            "app_id": LONGEST_APP if i % 2 else "short",
            "timestamp": (start + timedelta(seconds=2 * i)).isoformat(),
            "trace_id": f"t{i}",
            "status": "ok",
            "latency_ms": 100.0 + i,
            "scores": {name: (i % 10) / 10 for name in SCORE_NAMES},
        }
        lines.append(orjson.dumps(event).decode())
    events = data_dir / "events.ndjson"
    events.write_text("\n".join(lines) + "\n")
    output = data_dir / "report.html"
    done = sent_processed_reported(data_dir, events, output, "1h")
    assert "2 apps, 120 requests" in done.stderr, done.stderr
    return output


async def test_an_app_id_of_128_characters_does_not_widen_the_page(
    report_of_long_names: Path, tmp_path: Path
) -> None:
    widths = await drawn_and_evaluated(
        tmp_path,
        report_of_long_names,
        "({page: document.documentElement.scrollWidth, window: window.innerWidth,"
        " summary: document.querySelector('table').getBoundingClientRect().right})",
        width=1280,
        screenshot="report-long-names.png",
    )
    # Nothing beyond the window's right edge: no horizontal scrolling to read a row or heading.
    assert widths["page"] <= widths["window"], widths
    assert widths["summary"] <= widths["window"], widths


# Per score chart, each score's name on its axis and whether it lies wholly inside the chart.
SCORE_LABELS = """
[...document.querySelectorAll('div.chart[data-chart=scores]')].map(chart => {
    const svg = chart.querySelector('svg.main-svg').getBoundingClientRect();
    const ticks = [...chart.querySelectorAll('.xtick text, .ytick text')];
    return ticks.filter(text => text.textContent.includes('(n=')).map(text => {
        const box = text.getBoundingClientRect();
        return {name: text.textContent, inside: box.left >= svg.left && box.right <= svg.right
            && box.top >= svg.top && box.bottom <= svg.bottom};
    });
})
"""


async def test_long_and_non_latin_score_names_are_shown_whole(
    report_of_long_names: Path, tmp_path: Path
) -> None:
    labels = await drawn_and_evaluated(
        tmp_path, report_of_long_names, SCORE_LABELS, screenshot="report-score-names.png"
    )
    assert len(labels) == 2, labels
    for chart in labels:
        # Every name whole and within the chart: rotated labels ran past its bottom edge.
        names = sorted(label["name"] for label in chart)
        assert names == sorted(f"{n} (n=60)" for n in SCORE_NAMES), chart
        assert all(label["inside"] for label in chart), chart


# Per time chart: its drawn x range in hours, the tick labels, the widest bar in pixels.
TIME_AXES = """
[...document.querySelectorAll('div.chart:is([data-chart=latency], [data-chart=errors],'
    + ' [data-chart=usage])')].map(chart => {
    const range = chart.querySelector('.plotly-graph-div')._fullLayout.xaxis.range;
    return {
        kind: chart.dataset.chart,
        hours: (new Date(range[1] + 'Z') - new Date(range[0] + 'Z')) / 3.6e6,
        ticks: [...chart.querySelectorAll('.xtick text')].map(t => t.textContent),
        bar: Math.max(0, ...[...chart.querySelectorAll('.bars path')].map(
            p => p.getBoundingClientRect().width)),
    };
})
"""


async def test_one_event_in_a_day_is_drawn_on_the_day_not_on_a_millisecond(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)
    event = {
        "app_id": "solo",
        "timestamp": moment.isoformat(),
        "trace_id": "t1",
        "status": "ok",
        "latency_ms": 120.5,
        "tokens": {"input": 10, "output": 20},
    }
    events = tmp_path / "one.ndjson"
    events.write_text(orjson.dumps(event).decode() + "\n")
    output = tmp_path / "one.html"
    done = sent_processed_reported(data_dir, events, output, "24h")
    assert "1 apps, 1 requests" in done.stderr, done.stderr

    axes = await drawn_and_evaluated(tmp_path, output, TIME_AXES, screenshot="report-one-event.png")
    assert [axis["kind"] for axis in axes] == ["latency", "errors", "usage"], axes
    for axis in axes:
        # The axis spans the day asked for (it spanned a millisecond around the event, with
        # ticks like 22:30:20.9995), so a reader sees when in the day the request came.
        assert 23.9 < axis["hours"] < 24.1, axis
        assert not any("." in tick for tick in axis["ticks"]), axis
    # The event's tokens are a bar a reader can see, not a hairline.
    assert axes[2]["bar"] >= 4, axes


# Per chart: whether its legend covers the x axis's title or tick labels.
LEGEND_OVERLAPS = """
[...document.querySelectorAll('div.chart')].map(chart => {
    const legend = chart.querySelector('g.legend')?.getBoundingClientRect();
    const covered = [...chart.querySelectorAll('.g-xtitle text, .xtick text')].filter(text => {
        const box = text.getBoundingClientRect();
        return legend && box.width > 0 && box.left < legend.right && legend.left < box.right
            && box.top < legend.bottom && legend.top < box.bottom;
    });
    const plot = chart.querySelector('.plotly-graph-div')._fullLayout._size.h;
    return {kind: chart.dataset.chart, covered: covered.map(text => text.textContent), plot};
})
"""


async def test_no_legend_covers_an_axis_title_or_tick(
    report_of_an_incident: Path, tmp_path: Path
) -> None:
    overlaps = await drawn_and_evaluated(tmp_path, report_of_an_incident, LEGEND_OVERLAPS)
    assert overlaps and all(chart["covered"] == [] for chart in overlaps), overlaps
    # The room the legend takes below the axis leaves the plot itself readable.
    assert all(chart["plot"] >= 150 for chart in overlaps), overlaps


async def test_percentiles_of_three_requests_are_marked_as_such(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    events = tmp_path / "three.ndjson"
    events.write_text(
        "".join(
            orjson.dumps(
                {
                    "app_id": "few",
                    "timestamp": (start + timedelta(seconds=i)).isoformat(),
                    "trace_id": f"t{i}",
                    "status": "ok",
                    "latency_ms": latency,
                }
            ).decode()
            + "\n"
            for i, latency in enumerate((100.0, 200.0, 3000.0))
        )
    )
    output = tmp_path / "three.html"
    done = sent_processed_reported(data_dir, events, output, "1h")
    assert "1 apps, 3 requests" in done.stderr, done.stderr

    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open(output.as_uri())
        drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
        # The p50, p95 and p99 cells of the summary: their text and whether they are greyed.
        cells = await page.evaluate(
            "[...document.querySelector('table').rows[1].cells].slice(3, 6).map(cell =>"
            " [cell.textContent, getComputedStyle(cell).fontStyle])"
        )
        notes = await page.evaluate(
            "[...document.querySelectorAll('p.note')].map(p => p.textContent)"
        )
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(ARTIFACTS / "report-three-requests.png")
        log = page.log
        await page.close()

    assert log.errors == [], log.errors
    assert drawn
    # A p99 of three latencies is their largest: shown with its count, greyed, explained.
    p50, p95, p99 = cells
    assert "(n=" not in p50[0] and p50[1] == "normal", cells
    assert p95[0].endswith("(n=3)") and p95[1] == "italic", cells
    assert p99[0].endswith("(n=3)") and p99[1] == "italic", cells
    assert any("fewer latencies" in note for note in notes), notes


async def test_a_percentile_beyond_the_histogram_says_so(tmp_path: Path) -> None:
    """Two of 100 requests took ~14 hours: their p99 is "> 10,000,000" in the summary and an
    upward triangle at the chart's top edge that says so, not a made-up 9,716,280 ms."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    events = tmp_path / "stuck.ndjson"
    events.write_bytes(
        b"".join(
            orjson.dumps(
                {
                    "app_id": "stuck",
                    "timestamp": (start + timedelta(seconds=i)).isoformat(),
                    "trace_id": f"t{i}",
                    "status": "ok",
                    "latency_ms": 5e7 if i >= 98 else 100.0,
                }
            )
            + b"\n"
            for i in range(100)
        )
    )
    output = tmp_path / "stuck.html"
    sent_processed_reported(tmp_path / "data", events, output, "1h")
    found = await drawn_and_evaluated(
        tmp_path,
        output,
        "({cells: [...document.querySelector('table').rows[1].cells].slice(3, 6)"
        ".map(cell => cell.textContent),"
        " p99: document.querySelector('[data-chart=latency] .plotly-graph-div').data"
        ".find(trace => trace.name === 'p99'),"
        " triangles: document.querySelectorAll('[data-chart=latency] path.point').length,"
        " text: document.body.textContent})",
        screenshot="report-beyond-range.png",
    )
    p50, p95, p99 = found["cells"]
    # 100 ms read within half a bin (≈ 2.9 %, shown in whole ms); the p99 only as beyond.
    assert p50 == p95 and abs(float(p50) / 100 - 1) < 0.035, found["cells"]
    assert p99 == "> 10,000,000", found["cells"]
    assert "9,716,280" not in found["text"]
    trace = found["p99"]
    beyond = [i for i, text in enumerate(trace["hovertext"]) if text]
    assert beyond, trace
    assert all(
        trace["y"][i] == 1e7 and trace["marker"]["symbol"][i] == "triangle-up" for i in beyond
    )
    assert all(trace["hovertext"][i] == "beyond 10,000,000 ms" for i in beyond)
    assert found["triangles"] > 0


async def test_a_year_is_in_buckets_named_in_days(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    event = {
        "app_id": "yearly",
        "timestamp": (datetime.now(UTC) - timedelta(days=100)).isoformat(),
        "trace_id": "t1",
        "status": "ok",
        "latency_ms": 80.0,
        "tokens": {"input": 3, "output": 4},
    }
    events = tmp_path / "year.ndjson"
    events.write_text(orjson.dumps(event).decode() + "\n")
    output = tmp_path / "year.html"
    sent_processed_reported(data_dir, events, output, "365d")

    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open(output.as_uri())
        drawn = await page.wait_for(ALL_DRAWN, timeout_s=20)
        titles = await page.evaluate(
            "[...document.querySelectorAll('div.chart .gtitle')].map(t => t.textContent)"
        )
        meta = await page.evaluate("document.querySelector('p.meta').textContent")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(ARTIFACTS / "report-year.png")
        log = page.log
        await page.close()

    assert log.errors == [], log.errors
    assert drawn
    # A year in at most 120 buckets: 4 days each, said so (not "per 345600 s").
    assert [title.split(" per ")[1] for title in titles if " per " in title] == [
        "4 d (ms)",
        "4 d",
        "4 d",
    ], titles
    assert "buckets of 4 d" in meta, meta


async def test_the_header_gives_its_times_to_the_second(
    report_of_long_names: Path, tmp_path: Path
) -> None:
    async with Chromium(tmp_path / "profile") as browser:
        page = await browser.open(report_of_long_names.as_uri())
        meta = await page.evaluate("document.querySelector('p.meta').textContent")
        log = page.log
        await page.close()

    assert log.errors == [], log.errors
    # The range ends now (--from 1h): its ends and the time of writing to the second, in UTC.
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.match(rf"Event time {stamp} to {stamp} UTC · ", meta), meta
    assert re.search(rf" · generated {stamp} UTC$", meta), meta


# Per chart: its title's right edge and the left edge of its tool bar (the modebar).
TITLE_EDGES = """
[...document.querySelectorAll('div.chart')].map(chart => ({
    title: chart.querySelector('.gtitle').textContent,
    right: chart.querySelector('.gtitle').getBoundingClientRect().right,
    bar: chart.querySelector('.modebar').getBoundingClientRect().left,
}))
"""


async def test_no_chart_title_runs_under_its_tool_bar(
    report_of_long_names: Path, tmp_path: Path
) -> None:
    # The tool bar is drawn on hover too; it is in the page from the start, hidden.
    edges = await drawn_and_evaluated(tmp_path, report_of_long_names, TITLE_EDGES)
    assert edges and all(edge["right"] < edge["bar"] for edge in edges), edges
    # The app of the longest id is still named, its id cut, in its charts' titles.
    assert any(edge["title"].startswith("a" * 39 + "…") for edge in edges), edges


async def test_apps_that_report_no_tokens_have_no_chart_of_zero_tokens(
    report_of_long_names: Path, tmp_path: Path
) -> None:
    found = await drawn_and_evaluated(
        tmp_path,
        report_of_long_names,
        f"({{charts: {CHART_STATES.strip()},"
        " notes: [...document.querySelectorAll('p.note')].map(p => p.textContent),"
        # The tokens column of the summary.
        " tokens: [...document.querySelector('table').rows].slice(1)"
        ".map(row => row.cells[8].textContent)})",
    )
    charts, notes, tokens = found["charts"], found["notes"], found["tokens"]
    # Neither app's events carry token counts: said so, not drawn as a flat line at 0.
    assert [chart["kind"] for chart in charts].count("usage") == 0, charts
    assert notes.count("No token counts reported.") == 2, notes
    assert tokens == ["–", "–"], tokens


# What a page drew of the producers' text: links and bold anywhere (plotly.js draws "<a>" as
# an SVG link, "<b>" as a bold tspan), the score axis, the chart titles, the incident axis,
# the lines of the incident's hover label, the hover labels of a score and of the evaluated
# app, and the text of the table cells and notes.
DRAWN_TEXT = """
(() => {
    const texts = selector => [...document.querySelectorAll(selector)].map(t => t.textContent);
    const hovered = kind => {
        const chart = document.querySelector(`div.chart[data-chart=${kind}] .plotly-graph-div`);
        Plotly.Fx.hover(chart, [{curveNumber: 0, pointNumber: 0}]);
        return [...chart.querySelectorAll('.hoverlayer text')].map(t => t.textContent);
    };
    const scoreHover = hovered('scores');
    const evaluationHover = hovered('evaluation');
    const incidents = document.querySelector('div.chart[data-chart=incidents] .plotly-graph-div');
    Plotly.Fx.hover(incidents, [{curveNumber: 0, pointNumber: 0}]);
    return {
        scoreHover,
        evaluationHover,
        links: document.querySelectorAll('a').length,
        // A link's target in any namespace (plotly.js writes xlink:href).
        evil: document.querySelectorAll('[*|href*="evil.example"]').length,
        bold: document.querySelectorAll('b').length + [...document.querySelectorAll('tspan')]
            .filter(t => (t.getAttribute('style') || '').includes('bold')).length,
        scores: texts('div.chart[data-chart=scores] .ytick text'),
        titles: texts('div.chart .gtitle'),
        incident: texts('div.chart[data-chart=incidents] .ytick text'),
        hover: texts('div.chart[data-chart=incidents] .hoverlayer .hovertext tspan.line'),
        cells: texts('td, p.note, h3'),
    };
})()
"""


async def test_the_producers_text_is_shown_as_typed_not_as_markup(tmp_path: Path) -> None:
    output = tmp_path / "hostile.html"
    output.write_text(render_html(hostile_report()), encoding="utf-8")
    found = await drawn_and_evaluated(
        tmp_path, output, DRAWN_TEXT, screenshot="report-hostile-text.png"
    )
    # No link, no bold: "<a href=…>", "<b>" in a score name, an app id, an incident or an
    # evaluation are text.
    assert found["links"] == 0 and found["evil"] == 0 and found["bold"] == 0, found
    assert sorted(found["scores"]) == sorted(f"{name} (n=10)" for name in HOSTILE), found
    # Titles, "&amp;" as typed (plotly.js showed "&").
    assert sum(title.startswith(HOSTILE_APP) for title in found["titles"]) == 4, found
    assert (
        f"evaluation {HOSTILE[0]} · {HOSTILE[1]} · {HOSTILE[2]} per window start"
        in (found["titles"])
    )
    assert found["incident"] == [f"{HOSTILE_APP} · {HOSTILE[0]} · {HOSTILE[2]} · {HOSTILE[3]}"]
    # The hover label's four lines, the message's "<br>" among its text.
    assert len(found["hover"]) == 4 and found["hover"][3] == "one<br>two", found["hover"]
    # Hovered, a trace's name is whole: cut to 15 characters of its escaped text it ended
    # inside an entity ("&lt;i&am...").
    assert any(f"{name} (n=10)" in found["scoreHover"] for name in HOSTILE), found["scoreHover"]
    assert HOSTILE_APP in found["evaluationHover"], found["evaluationHover"]
    for text in (HOSTILE_APP, *HOSTILE):
        assert any(text in cell for cell in found["cells"]), (text, found["cells"])
