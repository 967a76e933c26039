"""Turns ``ReportData`` into one self-contained HTML page: plotly.js is inlined once in the
head, every chart is a div drawn by it, and nothing is loaded from the network."""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

import plotly.io as pio
from plotly.offline import get_plotlyjs

from report import figures, histogram
from report.data import ReportData
from report.series import AppSeries
from schemas import EvaluationResult

# No plotly logo: it links to plotly's website, which a report read offline cannot reach.
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
MAX_RESULT_ROWS = 200

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
.meta, .note { color: #555; } .note { font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
.critical { color: #c62828; font-weight: 600; } .warning { color: #b26a00; font-weight: 600; }
.ok { color: #2e7d32; } td.few { color: #888; font-style: italic; }
.chart { margin: 8px 0 20px; }
/* An app id is up to 128 characters without a space: it breaks anywhere rather than widening
   the page beyond the window (a table cell or heading does not wrap such a word otherwise). */
h3, .meta, .note, td.text { overflow-wrap: anywhere; }
td.time { white-space: nowrap; }
"""


def _e(value: object) -> str:
    return html.escape(str(value))


# Beyond this a number is written in scientific notation: the largest double in fixed
# notation is 309 digits long, wider than the page.
FIXED_NOTATION_LIMIT = 1e15


def _number(value: float | None, digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= FIXED_NOTATION_LIMIT:
        return f"{value:.{max(digits, 3)}e}"
    return f"{value:,.{digits}f}"


def _second(moment: datetime) -> str:
    """A moment in UTC to the second, for reading: a range ending now (the default) has
    microseconds no one needs ("23:04:51.148878")."""
    return figures.utc_text(moment.replace(microsecond=0))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], css: str = "") -> str:
    """Rows are already HTML (escaped by the caller)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _td(value: object, css: str = "") -> str:
    return f'<td class="{css}">{_e(value)}</td>' if css else f"<td>{_e(value)}</td>"


class _Charts:
    """Numbers the chart divs and turns figures into HTML."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, figure: figures.Figure, kind: str) -> str:
        self.count += 1
        div = pio.to_html(
            figure,
            validate=False,
            full_html=False,
            include_plotlyjs=False,
            config=PLOT_CONFIG,
            div_id=f"chart-{self.count}",
            default_height=f"{figures.HEIGHT}px",
        )
        return f'<div class="chart" data-chart="{_e(kind)}">{div}</div>'


def _percentile_cell(value: float, quantile: float, measured: int) -> str:
    """A latency percentile, marked (greyed, its count beside it) when it comes from fewer
    values than it takes to say anything beyond the largest of them: a p99 needs 100."""
    # Beyond the histogram's range the percentile is known only to be larger than its top.
    text = "> " + _number(histogram.HIGH_MS, 0) if math.isinf(value) else _number(value, 0)
    if measured >= math.ceil(1 / (1 - quantile) - 1e-9):
        return _td(text)
    return f'<td class="few" title="from {measured:,} latencies">{_e(text)} (n={measured:,})</td>'


def _summary(data: ReportData) -> str:
    open_by_app = Counter(i.app_id for i in data.incidents)
    rows = []
    few = False
    for s in data.apps:
        p50, p95, p99 = (float(v) for v in s.latency_overall)
        requests = s.requests
        measured = int(s.with_latency.sum())
        few = few or measured < 100
        over = int(s.over_slo.sum()) / max(measured, 1)
        cost = _number(float(s.cost.sum()), 4) if s.priced else "no price table"
        rows.append(
            [
                _td(s.app_id, "text"),
                _td(f"{requests:,}"),
                _td(_number(100 * int(s.errors.sum()) / max(requests, 1), 2)),
                _percentile_cell(p50, 0.5, measured),
                _percentile_cell(p95, 0.95, measured),
                _percentile_cell(p99, 0.99, measured),
                _td(_number(s.slo.latency_threshold_ms, 0)),
                _td(_number(100 * over, 2)),
                _td(
                    f"{int(s.tokens_in.sum() + s.tokens_out.sum()):,}"
                    if int(s.with_tokens.sum())
                    else "–"
                ),
                _td(cost),
                _td(open_by_app.get(s.app_id, 0)),
            ]
        )
    return _table(
        [
            "app",
            "requests",
            "error rate %",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "SLO ms",
            "over SLO %",
            "tokens",
            "cost",
            "incidents",
        ],
        rows,
    ) + (
        '<p class="note">A greyed percentile, its count beside it, comes from fewer latencies '
        "than it needs to mean more than their largest (p95: 20, p99: 100).</p>"
        if few
        else ""
    )


def _incidents(data: ReportData, chart: _Charts) -> str:
    if not data.incidents:
        return '<p class="note">No breach was open in the range.</p>'
    rows = [
        [
            _td(i.app_id, "text"),
            _td(i.severity, i.severity),
            _td(i.kind, "text"),
            _td(i.signal, "text"),
            _td(i.detector, "text"),
            _td(i.source, "text"),
            _td(_second(i.opened_at), "text time"),
            _td(_second(i.resolved_at) if i.resolved_at else "open", "text time"),
            _td(_number(i.observed, 3)),
            _td(_number(i.threshold, 3)),
            _td(i.message, "text"),
        ]
        for i in data.incidents
    ]
    table = _table(
        [
            "app",
            "severity",
            "kind",
            "signal",
            "detector",
            "source",
            "opened (UTC)",
            "resolved (UTC)",
            "observed",
            "threshold",
            "message",
        ],
        rows,
        "incidents",
    )
    return chart(figures.incident_timeline(data.incidents, data.request.end), "incidents") + table


def _app(series: AppSeries, window: figures.Window, chart: _Charts) -> str:
    parts = [
        f'<h3 id="app-{_e(series.app_id)}">{_e(series.app_id)}</h3>',
        chart(figures.latency(series, window), "latency"),
        chart(figures.errors(series, window), "errors"),
    ]
    # Without a token count from any request there is nothing to draw: a chart of zeros read
    # as requests that used no tokens.
    if int(series.with_tokens.sum()):
        parts.append(chart(figures.usage(series, window), "usage"))
    else:
        parts.append('<p class="note">No token counts reported.</p>')
    if series.scores:
        parts.append(chart(figures.scores(series), "scores"))
    else:
        parts.append('<p class="note">No scores reported.</p>')
    return "\n".join(parts)


def _evaluations(results: Sequence[EvaluationResult], chart: _Charts) -> str:
    if not results:
        return '<p class="note">No evaluation results in the range (the cold path has not run).</p>'
    judged: dict[tuple[str, str, str], list[EvaluationResult]] = defaultdict(list)
    for result in results:
        for value_name in result.thresholds:
            judged[(result.policy, result.metric, value_name)].append(result)
    counts: Counter[tuple[str, str, str]] = Counter((r.policy, r.metric, r.status) for r in results)
    statuses = ["ok", "warning", "critical", "insufficient_data", "unavailable"]
    pairs = sorted({(policy, metric) for policy, metric, _ in counts})
    parts = [
        _table(
            ["policy · metric", *statuses],
            (
                [
                    _td(f"{policy} · {metric}", "text"),
                    *(
                        _td(counts[(policy, metric, s)], s if counts[(policy, metric, s)] else "")
                        for s in statuses
                    ),
                ]
                for policy, metric in pairs
            ),
        )
    ]
    parts.extend(
        chart(figures.evaluation(policy, metric, value_name, found), "evaluation")
        for (policy, metric, value_name), found in sorted(judged.items())
    )
    breaching = [r for r in results if r.status in ("warning", "critical")]
    if breaching:
        rows = [
            [
                _td(_second(r.window.start), "text time"),
                _td(r.app_id, "text"),
                _td(f"{r.policy} · {r.metric}", "text"),
                _td(r.status, r.status),
                _td(
                    ", ".join(
                        f"{name} {_number(r.values.get(name), 3)}" for name in sorted(r.thresholds)
                    ),
                    "text",
                ),
                _td(r.reason, "text"),
            ]
            for r in breaching[-MAX_RESULT_ROWS:]
        ]
        parts.append(
            _table(["window (UTC)", "app", "policy · metric", "status", "values", "reason"], rows)
        )
    return "\n".join(parts)


def render_html(data: ReportData) -> str:
    """The whole page. Every chart is a ``div.plotly-graph-div`` inside a ``div.chart``."""
    chart = _Charts()
    request = data.request
    apps = ", ".join(s.app_id for s in data.apps) or "none"
    width = data.apps[0].width_s if data.apps else None
    body = [
        "<h1>evalstream report</h1>",
        f'<p class="meta">Event time {_e(_second(request.start))} to '
        f"{_e(_second(request.end))} UTC · apps: {_e(apps)}"
        + (f" · buckets of {figures.duration_text(width)}" if width else "")
        + f" · generated {_e(_second(data.generated_at))} UTC</p>",
        *(f'<p class="note">{_e(note)}</p>' for note in data.notes),
        "<h2>Summary</h2>",
        _summary(data) if data.apps else '<p class="note">No telemetry in the range.</p>',
        '<h2 id="incidents">Incidents</h2>',
        '<p class="meta">Breaches the hot and cold paths published, from the alert topic.</p>',
        _incidents(data, chart),
        "<h2>Apps</h2>",
        *(_app(series, (request.start, request.end), chart) for series in data.apps),
        '<h2 id="evaluations">Evaluations</h2>',
        _evaluations(data.evaluations, chart),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>evalstream report</title>"
        # An empty icon: served live (/report), a browser would otherwise fetch /favicon.ico.
        '<link rel="icon" href="data:,">'
        f"<style>{_STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script>'
        "</head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
