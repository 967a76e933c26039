"""The report's charts, one function per chart, as plotly figure specifications (plain dicts:
``data`` traces and a ``layout``) that plotly.js draws. Times are shown in UTC.

Plain dicts rather than plotly's Python figure objects: those validate every property against
plotly's schema, which cost seconds per report; these specifications use only documented
trace and layout attributes and are checked where it counts, by drawing them in a browser
(tests/integration/report).

plotly.js reads every string it draws (names, titles, hover and bar text, category labels) as
its own subset of HTML: a link, bold, an entity. The strings here are the producers' (score
names, app ids, signals, reasons) and are shown as they are: ``_figure``, which every chart
goes through, escapes every string of the specification (``literal``); a line break meant as
one is asked for with ``Lines``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from report import histogram
from report.data import Incident
from report.series import QUANTILES, AppSeries
from schemas import EvaluationResult, Thresholds

Figure = dict[str, Any]
Trace = dict[str, Any]

SEVERITY_COLOURS = {"critical": "#c62828", "warning": "#ef8f00"}
STATUS_COLOURS = {
    "ok": "#2e7d32",
    "warning": "#ef8f00",
    "critical": "#c62828",
    "insufficient_data": "#9e9e9e",
    "unavailable": "#616161",
}
HEIGHT = 340
LEGEND_ENTRIES_PER_ROW = 6
LEGEND_ROW_PX = 20
SECONDARY_AXIS = {"overlaying": "y", "side": "right", "rangemode": "tozero", "showgrid": False}


def utc_text(moment: datetime) -> str:
    """A moment as plotly reads dates: naive ISO text, here always UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def duration_text(seconds: int) -> str:
    """A bucket width in the largest unit that divides it: 30 min, 6 h, 4 d (not 345600 s)."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:,} {unit}"
    return f"{seconds:,} s"


# plotly.js draws a title on one line, under the chart's tool bar when it is long: an app id in
# a title is cut to this many characters (the heading above the charts gives it whole).
TITLE_ID_CHARS = 40


def _title_id(app_id: str) -> str:
    return app_id if len(app_id) <= TITLE_ID_CHARS else app_id[: TITLE_ID_CHARS - 1] + "…"


def _per(series: AppSeries) -> str:
    return duration_text(series.width_s)


def _x(moments: Sequence[datetime]) -> list[str]:
    return [utc_text(m) for m in moments]


# plotly.js pads an axis beyond its largest value and measures it from end to end: past ~1e307
# either overflows a double, the axis falls back to a default range and the point is not drawn
# (or its path is "Infinity"). Values beyond ±1e300, which only the largest doubles a producer
# may send reach, are drawn at ±1e300.
DRAWN_LIMIT = 1e300


def _drawn(value: float | None) -> float | None:
    """A value as a chart draws it: NaN and infinities are gaps (null), the rest within
    ±DRAWN_LIMIT."""
    if value is None or not math.isfinite(value):
        return None
    return min(max(float(value), -DRAWN_LIMIT), DRAWN_LIMIT)


def _y(values: npt.NDArray[np.float64] | npt.NDArray[np.int64]) -> list[float | None]:
    """Values for JSON, as charts draw them (``_drawn``)."""
    return [_drawn(v) for v in values]


class Lines(tuple[str, ...]):
    """Text of several lines, each shown as it is: the one markup a figure asks for."""

    __slots__ = ()


def literal(text: str) -> str:
    """``text`` as plotly.js shows it unchanged: its markup characters as the entities it
    decodes. Quotes as numeric entities: plotly.js decodes those but not ``&quot;``."""
    return html.escape(text, quote=False).replace('"', "&#34;").replace("'", "&#39;")


def _literal(spec: Any) -> Any:
    """Every string of a figure specification escaped (``literal``), ``Lines`` joined by
    plotly's line break: dates, colours and plotly's own names have nothing to escape."""
    if isinstance(spec, Lines):
        return "<br>".join(literal(line) for line in spec)
    if isinstance(spec, str):
        return literal(spec)
    if isinstance(spec, dict):
        return {key: _literal(value) for key, value in spec.items()}
    if isinstance(spec, list | tuple):
        return [_literal(value) for value in spec]
    return spec


def _figure(traces: list[Trace], title: str, *, height: int = HEIGHT, **layout: Any) -> Figure:
    """The figure of ``traces``, every string in it shown literally (``_literal``)."""
    figure: Figure = _literal(_figure_spec(traces, title, height=height, **layout))
    return figure


def _figure_spec(traces: list[Trace], title: str, *, height: int, **layout: Any) -> Figure:
    return {
        "data": traces,
        "layout": {
            "title": {"text": title, "x": 0.01},
            "height": height,
            "margin": {"l": 60, "r": 60, "t": 50, "b": 40},
            # Below the x axis and its title, however many rows it takes: plotly.js moves the
            # plot area up to make room (at y -0.2 of the plot area, a legend of two rows or
            # more, or one under a date axis of two-line ticks, covered the axis title).
            "legend": {"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom"},
            "xaxis": {"type": "date", "title": {"text": "UTC"}, "automargin": True},
            # Trace names whole in hover labels: plotly.js cuts them to 15 characters of their
            # escaped text, which could end inside an entity and show "&am" for "&".
            "hoverlabel": {"namelength": -1},
            **layout,
        },
    }


Window = tuple[datetime, datetime]


def _time_axis(window: Window) -> dict[str, Any]:
    """A date axis over the whole report range: fitted to the telemetry alone, one event's axis
    spanned a millisecond and a burst filled the chart as if it were the whole range."""
    return {"type": "date", "title": {"text": "UTC"}, "automargin": True, "range": _x(window)}


def _bucket_bars(series: AppSeries) -> dict[str, Any]:
    """Bars as wide as their buckets, from each bucket's start: plotly.js otherwise sizes them
    by the gaps between bars, and a lone bar on an axis over the whole range is a hairline."""
    return {"width": series.width_s * 1000, "offset": 0}


def _flat(x: Sequence[str], y: float, name: str, colour: str, axis: str = "y") -> Trace:
    """A horizontal reference line across the series, as a trace: it has a legend entry and
    can sit on a secondary axis."""
    ends = [x[0], x[-1]] if x else []
    return {
        "type": "scatter",
        "x": ends,
        "y": [y] * len(ends),
        "yaxis": axis,
        "mode": "lines",
        "name": name,
        "line": {"color": colour, "dash": "dash", "width": 1.5},
        "hoverinfo": "name+y",
    }


BEYOND_TEXT = f"beyond {histogram.HIGH_MS:,.0f} ms"


def _percentile_trace(x: list[str], values: npt.NDArray[np.float64], name: str) -> Trace:
    """A percentile over time; one beyond the histogram's range (infinite) is drawn at its top
    edge as an upward triangle that says so when hovered, not left out: it is the worst point."""
    beyond = np.isposinf(values)
    trace: Trace = {
        "type": "scatter",
        "x": x,
        "y": _y(np.where(beyond, histogram.HIGH_MS, values)),
        "mode": "lines+markers",
        "marker": {"size": 4},
        "name": name,
    }
    if beyond.any():
        trace["marker"] = {
            "size": [9 if b else 4 for b in beyond],
            "symbol": ["triangle-up" if b else "circle" for b in beyond],
        }
        # Hovered, such a point shows its drawn value with what it stands for.
        trace["hovertext"] = [BEYOND_TEXT if b else "" for b in beyond]
        trace["hoverinfo"] = "x+y+text+name"
    return trace


def latency(series: AppSeries, window: Window) -> Figure:
    x = _x(series.starts)
    traces: list[Trace] = [
        _percentile_trace(x, series.latency_percentiles[:, column], f"p{round(q * 100)}")
        for column, q in enumerate(QUANTILES)
    ]
    traces.append(_flat(_x(window), series.slo.latency_threshold_ms, "SLO threshold", "#c62828"))
    return _figure(
        traces,
        f"{_title_id(series.app_id)} · latency percentiles per {_per(series)} (ms)",
        xaxis=_time_axis(window),
        yaxis={"title": {"text": "ms"}, "rangemode": "tozero"},
    )


def errors(series: AppSeries, window: Window) -> Figure:
    x = _x(series.starts)
    traces: list[Trace] = [
        {
            "type": "bar",
            "x": x,
            **_bucket_bars(series),
            "y": _y(series.error_rate * 100),
            "name": "error rate %",
            "marker": {"color": "#ef9a9a"},
        },
        _flat(_x(window), series.slo.error_budget * 100, "error budget %", "#c62828"),
        {
            "type": "scatter",
            "x": x,
            "y": _y(series.error_burn),
            "yaxis": "y2",
            "mode": "lines",
            "name": "error-budget burn ×",
        },
        {
            "type": "scatter",
            "x": x,
            "y": _y(series.latency_burn),
            "yaxis": "y2",
            "mode": "lines",
            "name": "latency-budget burn ×",
        },
        _flat(_x(window), 1.0, "burn 1× (budget spent at its pace)", "#555555", axis="y2"),
    ]
    return _figure(
        traces,
        f"{_title_id(series.app_id)} · errors and SLO budget burn per {_per(series)}",
        xaxis=_time_axis(window),
        yaxis={"title": {"text": "error rate %"}, "rangemode": "tozero"},
        yaxis2={**SECONDARY_AXIS, "title": {"text": "burn rate ×"}},
    )


def usage(series: AppSeries, window: Window) -> Figure:
    x = _x(series.starts)
    traces: list[Trace] = [
        {
            "type": "bar",
            "x": x,
            **_bucket_bars(series),
            "y": _y(series.tokens_in),
            "name": "input tokens",
        },
        {
            "type": "bar",
            "x": x,
            **_bucket_bars(series),
            "y": _y(series.tokens_out),
            "name": "output tokens",
        },
    ]
    title = f"{_title_id(series.app_id)} · tokens per {_per(series)}"
    layout: dict[str, Any] = {
        "barmode": "stack",
        "xaxis": _time_axis(window),
        "yaxis": {"title": {"text": "tokens"}},
    }
    if series.priced:
        traces.append(
            {
                "type": "scatter",
                "x": x,
                "y": _y(series.cost),
                "yaxis": "y2",
                "mode": "lines+markers",
                "marker": {"size": 4},
                "name": "cost",
            }
        )
        layout["yaxis2"] = {**SECONDARY_AXIS, "title": {"text": "cost"}}
        title += " and cost"
    return _figure(traces, title, **layout)


# plotly.js's violin draws a density whose bandwidth comes from the values' standard deviation:
# with values beyond ~1e150 their squares overflow a double and the violin is not drawn at all
# ("Something went wrong with computing the violin span"). Scores take any finite double, so a
# score reaching that far is drawn as a box (quartiles, no density) instead, its name saying
# where values beyond DRAWN_LIMIT are drawn.
DENSITY_LIMIT = 1e150


def _score_trace(name: str, values: npt.NDArray[np.float64]) -> Trace:
    finite = np.abs(values[np.isfinite(values)])
    largest = float(finite.max()) if finite.size else 0.0
    if largest <= DENSITY_LIMIT:
        return {
            "type": "violin",
            "orientation": "h",
            "x": _y(values),
            "name": name,
            "box": {"visible": True},
            "meanline": {"visible": True},
            "points": False,
        }
    if largest > DRAWN_LIMIT:
        name += f", beyond ±{DRAWN_LIMIT:g} drawn at ±{DRAWN_LIMIT:g}"
    return {"type": "box", "orientation": "h", "x": _y(values), "name": name, "boxpoints": False}


# Per score: the height of its row in the score chart.
SCORE_ROW_PX = 56


def scores(series: AppSeries) -> Figure:
    """One horizontal violin per score, its name on the y axis: names are up to 64 characters
    in any script, which upright violins could show only as rotated labels cut off by the
    chart's bottom edge."""
    traces = [
        _score_trace(f"{name} (n={series.score_counts[name]:,})", values)
        for name, values in series.scores.items()
    ]
    return _figure(
        traces,
        f"{_title_id(series.app_id)} · score distributions (uniform sample of ≤ 2,000 per score)",
        height=max(HEIGHT, 110 + SCORE_ROW_PX * len(traces)),
        showlegend=False,
        xaxis={"type": "linear", "title": {"text": "score"}},
        # The first score on top, names given the room they need.
        yaxis={"type": "category", "automargin": True, "autorange": "reversed"},
    )


def incident_timeline(incidents: Sequence[Incident], end: datetime) -> Figure:
    """One bar per incident from opening to resolution (to ``end`` while open)."""
    labels = sorted({i.label for i in incidents})
    traces: list[Trace] = []
    for severity, colour in SEVERITY_COLOURS.items():
        chosen = [i for i in incidents if i.severity == severity]
        if not chosen:
            continue
        stops = [i.resolved_at or max(end, i.opened_at + timedelta(seconds=1)) for i in chosen]
        traces.append(
            {
                "type": "bar",
                "orientation": "h",
                "base": _x([i.opened_at for i in chosen]),
                # Durations in milliseconds: a date axis measures bar lengths in ms.
                "x": [
                    (stop - i.opened_at).total_seconds() * 1000
                    for i, stop in zip(chosen, stops, strict=True)
                ],
                "y": [i.label for i in chosen],
                "name": severity,
                "marker": {"color": colour},
                "text": ["open" if i.resolved_at is None else "" for i in chosen],
                "hovertext": [
                    Lines(
                        (
                            f"{i.app_id} {i.kind} {i.severity}",
                            f"opened {utc_text(i.opened_at)}",
                            f"resolved {utc_text(i.resolved_at)}" if i.resolved_at else "open",
                            i.message,
                        )
                    )
                    for i in chosen
                ],
                "hoverinfo": "text",
            }
        )
    return _figure(
        traces,
        "incidents (opened → resolved)",
        height=max(HEIGHT, 120 + 28 * len(labels)),
        barmode="overlay",
        yaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": labels,
            "automargin": True,
        },
    )


def _bounds(thresholds: Thresholds) -> list[tuple[str, float]]:
    found: list[tuple[str, float]] = []
    for severity, bound in (("warning", thresholds.warning), ("critical", thresholds.critical)):
        if bound is None:
            continue
        found.extend(
            (f"{severity} {side}", value)
            for side, value in (("min", bound.min), ("max", bound.max))
            if value is not None
        )
    return found


def evaluation(
    policy: str, metric: str, value_name: str, results: Sequence[EvaluationResult]
) -> Figure:
    """One judged value over windows, a line per app, markers coloured by status, with every
    distinct bound the results were judged against."""
    traces: list[Trace] = []
    for app_id in sorted({r.app_id for r in results}):
        mine = sorted((r for r in results if r.app_id == app_id), key=lambda r: r.window.start)
        values = [r.values.get(value_name) for r in mine]
        traces.append(
            {
                "type": "scatter",
                "x": _x([r.window.start for r in mine]),
                "y": [_drawn(v) for v in values],
                "mode": "lines+markers",
                "name": app_id,
                "marker": {
                    "size": 9,
                    "color": [STATUS_COLOURS.get(r.status, "#000000") for r in mine],
                    "line": {"width": 1, "color": "#333333"},
                },
                "hovertext": [f"{app_id}: {r.status} {r.reason}" for r in mine],
            }
        )
    # Bounds span the windows, so they show even when there is only one window.
    x = _x([min(r.window.start for r in results), max(r.window.end for r in results)])
    seen: set[tuple[str, float]] = set()
    for result in results:
        thresholds = result.thresholds.get(value_name)
        for label, value in _bounds(thresholds) if thresholds else []:
            if (label, value) in seen:
                continue
            seen.add((label, value))
            colour = SEVERITY_COLOURS["critical" if label.startswith("critical") else "warning"]
            traces.append(_flat(x, value, f"{label} {value:g}", colour))
    # A legend row holds about six apps; the chart grows by the rows beyond the first so that
    # the legend, below the axis, does not squeeze the plot to a strip.
    rows = math.ceil(len(traces) / LEGEND_ENTRIES_PER_ROW)
    return _figure(
        traces,
        f"evaluation {policy} · {metric} · {value_name} per window start",
        height=HEIGHT + LEGEND_ROW_PX * max(rows - 1, 0),
    )
