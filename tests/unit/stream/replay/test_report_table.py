"""The replay's readable table: producers' text shown as text."""

from __future__ import annotations

import io

from rich.console import Console

from stream.replay.report import table


def test_a_score_name_is_text_not_markup_and_its_escapes_are_shown() -> None:
    breach = {
        "app_id": "app-a",
        "signal": "score:[/]\x1b[2J[bold]x",
        "detector": "adwin",
        "state": "opened",
        "severity": "warning",
        "opened_at": "2026-12-01T10:00:00+00:00",
        "observed": 0.5,
    }
    out = io.StringIO()
    # "[/]" as markup has nothing to close: rich refused the whole table.
    Console(file=out, width=200, color_system=None).print(table({"job": "j", "breaches": [breach]}))
    printed = out.getvalue()
    assert "score:[/]\\x1b[2J[bold]x" in printed
    assert "\x1b" not in printed
