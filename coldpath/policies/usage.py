"""Token usage and cost of a window, from a configurable price table per model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from coldpath.policies import params as check
from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.columns import columns
from schemas import AppConfig, TelemetryDocument

PRICE_FIELDS = ("input_per_1k", "output_per_1k")
VALUE_NAMES = ValueNames(
    (
        "requests",
        "with_tokens",
        "without_tokens",
        "tokens_in_mean",
        "tokens_out_mean",
        "tokens_in_total",
        "tokens_out_total",
        "tokens_total",
        "cost",
        "cost_per_request",
        "unpriced",
    )
)


@dataclass(frozen=True)
class Price:
    """Currency per 1,000 tokens (whatever currency the table is written in)."""

    input_per_1k: float
    output_per_1k: float


def _price(value: Any, where: str) -> Price:
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: expected a table with {' and '.join(PRICE_FIELDS)}")
    for key in value:
        if key not in PRICE_FIELDS:
            raise ValueError(f"{where}.{key}: unknown field (known: {', '.join(PRICE_FIELDS)})")
    for field in PRICE_FIELDS:
        if field not in value:
            raise ValueError(f"{where}.{field}: missing")
    found = [check.finite(value[f], f"{where}.{f}", minimum=0.0) for f in PRICE_FIELDS]
    return Price(*found)


def parse_prices(params: Mapping[str, Any]) -> tuple[dict[str, Price], Price | None]:
    check.reject_unknown(params, {"prices", "default"})
    table = check.mapping(params, "prices")
    prices = {model: _price(value, f"prices.{model}") for model, value in table.items()}
    default = params.get("default")
    return prices, (_price(default, "default") if default is not None else None)


class UsageMetric:
    """``usage`` v1 — values ``requests``, ``with_tokens``, ``without_tokens``,
    ``tokens_in_mean``, ``tokens_out_mean`` (per request that reported tokens),
    ``tokens_in_total``, ``tokens_out_total``, ``tokens_total``, ``cost`` (total),
    ``cost_per_request`` (mean over priced requests) and ``unpriced``.

    Parameters: ``prices`` — ``{model_id: {input_per_1k, output_per_1k}}`` — and an optional
    ``default`` price for other models. A document with tokens whose ``model_id`` has no price
    (and no default) is counted in ``unpriced`` and left out of ``cost``: a missing price never
    reads as free. Documents without ``tokens`` are counted in ``without_tokens``. Exact
    (sums of integers in float64, exact below 2**53 tokens). Per-model costs in details.
    """

    name: ClassVar[str] = "usage"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        parse_prices(params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return VALUE_NAMES

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        prices, default = parse_prices(params)
        return UsageAccumulator(prices, default)


class UsageAccumulator:
    def __init__(self, prices: Mapping[str, Price], default: Price | None) -> None:
        self.models = list(prices)
        # Slot per priced model, then the default, then "unpriced" (NaN prices).
        self.slot: dict[str | None, int] = {m: index for index, m in enumerate(self.models)}
        self.fallback = len(self.models) if default is not None else len(self.models) + 1
        rows = [*prices.values(), default or Price(0.0, 0.0), Price(np.nan, np.nan)]
        self.input_price = np.array([p.input_per_1k for p in rows]) / 1000.0
        self.output_price = np.array([p.output_per_1k for p in rows]) / 1000.0
        self.cost_by_slot = np.zeros(len(rows))
        self.requests_by_slot = np.zeros(len(rows), dtype=np.int64)
        self.requests = 0
        self.with_tokens = 0
        self.tokens_in = 0.0
        self.tokens_out = 0.0

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        pass

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        page = columns(documents)
        self.requests += page.size
        reported = ~np.isnan(page.tokens_in)
        if not reported.any():
            return
        tokens_in = page.tokens_in[reported]
        tokens_out = page.tokens_out[reported]
        self.with_tokens += len(tokens_in)
        self.tokens_in += float(tokens_in.sum())
        self.tokens_out += float(tokens_out.sum())
        slot, fallback = self.slot, self.fallback
        slots = np.array([slot.get(m, fallback) for m in page.model_ids], dtype=np.intp)[reported]
        cost = tokens_in * self.input_price[slots] + tokens_out * self.output_price[slots]
        size = len(self.cost_by_slot)
        self.cost_by_slot += np.bincount(slots, weights=np.nan_to_num(cost), minlength=size)
        self.requests_by_slot += np.bincount(slots, minlength=size)

    def finish(self) -> MetricOutcome:
        n = self.with_tokens
        unpriced = int(self.requests_by_slot[-1])
        priced = n - unpriced
        cost = float(self.cost_by_slot[:-1].sum())
        values: dict[str, float | None] = {
            "requests": self.requests,
            "with_tokens": n,
            "without_tokens": self.requests - n,
            "tokens_in_mean": self.tokens_in / n if n else None,
            "tokens_out_mean": self.tokens_out / n if n else None,
            "tokens_in_total": self.tokens_in,
            "tokens_out_total": self.tokens_out,
            "tokens_total": self.tokens_in + self.tokens_out,
            "cost": cost if priced else None,
            "cost_per_request": cost / priced if priced else None,
            "unpriced": unpriced,
        }
        names = [*self.models, "default"]
        details = {
            "cost_by_price": {
                name: float(self.cost_by_slot[index])
                for index, name in enumerate(names)
                if self.requests_by_slot[index]
            }
        }
        if not n:
            reason = "no document in the window reported tokens"
            return MetricOutcome(values, 0, "insufficient_data", reason, details)
        return MetricOutcome(values, n, details=details)
