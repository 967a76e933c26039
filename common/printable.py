"""Text from producers made safe to print on a terminal or in a log line.

App ids are restricted, but score names, metadata keys and event ids are any text a producer
chose: an escape sequence in one would reach an operator's terminal (``\\x1b[2J`` clears it,
OSC sequences retitle it), and a newline in one would start a forged log line.
"""

from __future__ import annotations

import re

# C0 controls but tab, DEL, C1 controls, the Unicode line and paragraph separators and the
# bidirectional overrides and isolates (which reorder what is shown around them).
_UNPRINTABLE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\u202e``)."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
