"""A check the settings share: the things a list names (policies, subscriptions) are named once."""

from __future__ import annotations

from collections.abc import Sequence


def check_named_once(names: Sequence[str], what: str) -> None:
    """Raise ValueError naming the first repeated name's place (``[2].name: ...``)."""
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ValueError(f"[{index}].name: {what} {name!r} is defined twice")
