"""Producers' text on a terminal and in log lines: control characters escaped, the rest kept."""

from __future__ import annotations

import pytest

from common.printable import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("latency_ms", "latency_ms"),
        ("score:relevance\tv2 é 💥", "score:relevance\tv2 é 💥"),  # tab and any letter kept
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("a\nforged line\r", "a\\x0aforged line\\x0d"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("rtl \u202egnp.exe", "rtl \\u202egnp.exe"),
        ("line\u2028sep", "line\\u2028sep"),
    ],
)
def test_control_characters_are_escaped_and_nothing_else(text: str, shown: str) -> None:
    assert printable(text) == shown
