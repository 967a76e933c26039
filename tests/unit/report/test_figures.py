"""The report's figures show the producers' text literally: plotly.js reads its strings as a
subset of HTML (links, bold, line breaks, entities), so every one is escaped on the way in."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

from report import figures, render_html
from report.data import ReportData
from tests.unit.report.docs import HOSTILE, HOSTILE_APP, hostile_report

# plotly.js's entity decoding (convertEntities in svg_text_utils.js): these names and numeric
# references; any other "&name;" stays as it is.
_ENTITIES = {"mu": "μ", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0"}
_ENTITIES |= {"times": "×", "plusmn": "±", "deg": "°"}
_ENTITY = re.compile(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);")
# A tag as plotly.js finds one in a string.
_TAG = re.compile(r"<[^<>]*>")


def _decoded(match: re.Match[str]) -> str:
    name = match[1]
    if name.startswith("#x"):
        return chr(int(name[2:], 16))
    if name.startswith("#"):
        return chr(int(name[1:]))
    return _ENTITIES.get(name, match[0])


def shown(text: str) -> list[str]:
    """The lines plotly.js draws of ``text``: split at its line breaks, entities decoded; any
    other tag fails the test (it would be drawn as markup)."""
    lines = text.split("<br>")
    for line in lines:
        assert not _TAG.search(line), text
    return [_ENTITY.sub(_decoded, line) for line in lines]


def strings(spec: Any) -> Iterator[str]:
    if isinstance(spec, str):
        yield spec
    elif isinstance(spec, dict):
        for value in spec.values():
            yield from strings(value)
    elif isinstance(spec, list):
        for value in spec:
            yield from strings(value)


def every_figure(data: ReportData) -> dict[str, figures.Figure]:
    (series,) = data.apps
    window = (data.request.start, data.request.end)
    result = data.evaluations[0]
    (value_name,) = result.thresholds
    return {
        "latency": figures.latency(series, window),
        "errors": figures.errors(series, window),
        "usage": figures.usage(series, window),
        "scores": figures.scores(series),
        "incidents": figures.incident_timeline(data.incidents, data.request.end),
        "evaluation": figures.evaluation(result.policy, result.metric, value_name, [result]),
    }


def test_no_string_of_any_figure_is_markup_but_a_line_break() -> None:
    for kind, figure in every_figure(hostile_report()).items():
        for text in strings(figure):
            shown(text)
            # Quotes too: no attribute can be closed or opened by the producer's text.
            assert not any(c in text for c in "\"'"), (kind, text)


def test_the_producers_text_is_shown_as_typed() -> None:
    found = every_figure(hostile_report())
    names = [shown(trace["name"]) for trace in found["scores"]["data"]]
    assert sorted(names) == sorted([f"{name} (n=10)"] for name in HOSTILE)
    for kind in ("latency", "errors", "usage", "scores"):
        assert shown(found[kind]["layout"]["title"]["text"])[0].startswith(HOSTILE_APP), kind

    (bar,) = found["incidents"]["data"]
    (label,) = bar["y"]
    assert shown(label) == [" · ".join((HOSTILE_APP, HOSTILE[0], HOSTILE[2], HOSTILE[3]))]
    assert found["incidents"]["layout"]["yaxis"]["categoryarray"] == [label]
    (hover,) = bar["hovertext"]
    # Four lines: a "<br>" in the message is text, not a fifth.
    lines = shown(hover)
    assert len(lines) == 4 and lines[0] == f"{HOSTILE_APP} {HOSTILE[0]} critical", lines
    assert lines[3] == "one<br>two", lines

    evaluation = found["evaluation"]
    assert shown(evaluation["layout"]["title"]["text"]) == [
        f"evaluation {HOSTILE[0]} · {HOSTILE[1]} · {HOSTILE[2]} per window start"
    ]
    line = evaluation["data"][0]
    assert shown(line["name"]) == [HOSTILE_APP]
    assert shown(line["hovertext"][0]) == [f"{HOSTILE_APP}: warning {HOSTILE[3]}"]


class _Page(HTMLParser):
    """The elements of a page's body and the text of its cells, headings and notes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.texts: list[str] = []
        self._open: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag in ("td", "h3", "p"):
            self._open.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "h3", "p") and self._open:
            self.texts.append(self._open.pop())

    def handle_data(self, data: str) -> None:
        if self._open:
            self._open[-1] += data


def test_the_page_around_the_charts_shows_the_same_text_as_typed() -> None:
    page = render_html(hostile_report())
    body = page.split("</head>", 1)[1]
    parsed = _Page()
    parsed.feed(body)
    # Nothing the producers wrote became an element: no link, no bold.
    assert "a" not in parsed.tags and "b" not in parsed.tags, sorted(set(parsed.tags))
    for text in (HOSTILE_APP, *HOSTILE):
        assert any(text in cell for cell in parsed.texts), (text, parsed.texts)
    assert f"{HOSTILE[0]} · {HOSTILE[1]}" in parsed.texts
