"""Parameter checks shared by the built-in metrics: each raises ValueError naming the parameter,
so a wrong policy is refused at start with the setting's name."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def reject_unknown(params: Mapping[str, Any], known: Iterable[str]) -> None:
    allowed = sorted(known)
    for name in params:
        if name not in allowed:
            listed = ", ".join(allowed) or "none"
            raise ValueError(f"{name}: unknown parameter (known: {listed})")


def number(
    params: Mapping[str, Any],
    name: str,
    default: float | None,
    *,
    minimum: float | None = None,
    positive: bool = False,
) -> float | None:
    """A finite number (bools refused: ``true`` is not a threshold)."""
    if name not in params or params[name] is None:
        return default
    return finite(params[name], name, minimum=minimum, positive=positive)


def finite(value: Any, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be ≥ {minimum}, got {value!r}")
    return float(value)


def integer(params: Mapping[str, Any], name: str, default: int, *, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")
    return value


def mapping(params: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = params.get(name, {})
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ValueError(f"{name}: expected a table keyed by name, got {value!r}")
    return value


def names(params: Mapping[str, Any], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = params.get(name, default)
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{name}: expected a list of names, got {value!r}")
    if not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{name}: every entry must be a non-empty string, got {value!r}")
    return tuple(value)
