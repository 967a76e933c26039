"""Error rate of a window, overall and per ``error_type``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Any, ClassVar

import numpy as np

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.columns import columns
from coldpath.policies.tally import OTHER, BoundedCounts
from schemas import AppConfig, TelemetryDocument

# An error without an error_type still counts, under this name.
UNSPECIFIED = "unspecified"
# Error types beyond this many distinct ones are counted together as ``_other``.
MAX_ERROR_TYPES = 50


class ErrorsMetric:
    """``errors`` v1 — values ``count`` (documents), ``errors``, ``rate``, and per error type
    ``errors.<type>`` and ``rate.<type>`` (share of all documents).

    A document is an error when its ``status`` is ``error``; its ``error_type`` names the
    breakdown (``unspecified`` when absent; past 50 distinct types, new ones are counted as
    ``_other``). Parameter ``types``: error types always reported, 0 in a window without them,
    and the only ones a threshold may name (``rate.timeout`` needs ``types = ["timeout"]``: a
    misspelt type is refused at start rather than never matching). Exact. Zero documents →
    None rates, status ``insufficient_data``.
    """

    name: ClassVar[str] = "errors"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        _types(params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        types = _types(params)
        exact = (
            "count",
            "errors",
            "rate",
            *(f"{n}.{t}" for t in types for n in ("errors", "rate")),
        )
        return ValueNames(exact, hint="errors.<type> and rate.<type> need the type in params.types")

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return ErrorsAccumulator(_types(params))


def _types(params: Mapping[str, Any]) -> tuple[str, ...]:
    check.reject_unknown(params, {"types"})
    return check.names(params, "types", ())


class ErrorsAccumulator:
    def __init__(self, types: tuple[str, ...] = ()) -> None:
        self.documents = 0
        # Declared types hold their own slots from the start: counted under their own name
        # however many other types come first, and reported (0) when none occurred.
        self.types = BoundedCounts(MAX_ERROR_TYPES + len(set(types)))
        self.types.counts.update(dict.fromkeys(types, 0))

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        page = columns(documents)
        self.documents += page.size
        error = page.error
        if np.any(error):
            failed = compress(page.error_types, error.tolist())
            self.types.add(kind if kind is not None else UNSPECIFIED for kind in failed)

    def finish(self) -> MetricOutcome:
        n = self.documents
        errors = self.types.total
        values: dict[str, float | None] = {
            "count": n,
            "errors": errors,
            "rate": errors / n if n else None,
        }
        for kind, count in sorted(self.types.counts.items(), key=lambda item: str(item[0])):
            values[f"errors.{kind}"] = count
            values[f"rate.{kind}"] = count / n if n else None
        if not n:
            return MetricOutcome(values, 0, "insufficient_data", "no document in the window")
        details = {"types_capped": self.types.counts.get(OTHER, 0) > 0}
        return MetricOutcome(values, n, details=details)
