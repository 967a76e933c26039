"""Error rate of a window, overall and per ``error_type``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import compress
from typing import Any, ClassVar

import numpy as np

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome
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
    ``_other``). Exact. Zero documents → None rates, status ``insufficient_data``.
    """

    name: ClassVar[str] = "errors"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check.reject_unknown(params, set())

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        self.validate_params(params)
        return ErrorsAccumulator()


class ErrorsAccumulator:
    def __init__(self) -> None:
        self.documents = 0
        self.types = BoundedCounts(MAX_ERROR_TYPES)

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
            values[f"rate.{kind}"] = count / n
        if not n:
            return MetricOutcome(values, 0, "insufficient_data", "no document in the window")
        details = {"types_capped": OTHER in self.types.counts}
        return MetricOutcome(values, n, details=details)
