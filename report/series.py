"""Per-app series over time, accumulated one page of documents at a time.

Buckets are aligned to the UTC epoch and start one second wide; whenever the documents seen
span more than ``max_buckets`` buckets, the width steps up the ladder (each width divides the
next, so buckets merge exactly) and the arrays are folded. Memory is bounded by
``max_buckets`` × the latency histogram, whatever the number of documents; score distributions
keep a fixed-size uniform sample per score name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from report import histogram
from report.prices import PriceTable
from schemas import SloConfig, Status, TelemetryDocument

DEFAULT_MAX_BUCKETS = 120
DAY_S = 86_400
# Bucket widths in seconds; each divides the next. Past a day, widths double.
WIDTHS_S = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 10_800, 21_600, 43_200, DAY_S)
QUANTILES = (0.5, 0.95, 0.99)
SCORE_SAMPLE_SIZE = 2_000
# Score names are chosen by producers; beyond this many per app, new names are not kept.
MAX_SCORE_NAMES = 16

_COUNTERS = ("count", "errors", "with_latency", "over_slo", "with_tokens", "unpriced")
_SUMS = ("tokens_in", "tokens_out", "cost")


def next_width(width_s: int) -> int:
    for candidate in WIDTHS_S:
        if candidate > width_s:
            return candidate
    return width_s * 2


def width_for(span_s: float, max_buckets: int = DEFAULT_MAX_BUCKETS) -> int:
    """The narrowest width of the ladder whose buckets cover ``span_s`` seconds, wherever they
    start, in at most ``max_buckets`` buckets."""
    width = WIDTHS_S[0]
    while math.ceil(span_s / width) + 1 > max_buckets:
        width = next_width(width)
    return width


class ScoreSample:
    """A uniform sample of at most ``size`` values of one score (reservoir sampling, seeded)."""

    def __init__(self, size: int = SCORE_SAMPLE_SIZE, seed: int = 0) -> None:
        self.size = size
        self.seen = 0
        self._values = np.empty(size, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def add(self, values: npt.NDArray[np.float64]) -> None:
        free = min(self.size - self.seen, len(values)) if self.seen < self.size else 0
        if free:
            self._values[self.seen : self.seen + free] = values[:free]
        rest = values[free:]
        if len(rest):
            # Algorithm R, vectorised: the i-th value seen (0-based) replaces a random slot
            # with probability size / (i + 1). Later values of the page win a shared slot, as
            # they would one at a time.
            positions = self.seen + free + np.arange(len(rest))
            slots = self._rng.integers(0, positions + 1)
            keep = slots < self.size
            self._values[slots[keep]] = rest[keep]
        self.seen += len(values)

    @property
    def values(self) -> npt.NDArray[np.float64]:
        return self._values[: min(self.seen, self.size)].copy()


@dataclass
class AppSeries:
    """One app's buckets: ``starts[i]`` is the start of bucket ``i`` (``width_s`` long)."""

    app_id: str
    slo: SloConfig
    priced: bool
    width_s: int
    starts: list[datetime]
    count: npt.NDArray[np.int64]
    errors: npt.NDArray[np.int64]
    with_latency: npt.NDArray[np.int64]
    over_slo: npt.NDArray[np.int64]
    with_tokens: npt.NDArray[np.int64]
    unpriced: npt.NDArray[np.int64]
    tokens_in: npt.NDArray[np.float64]
    tokens_out: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    # Shape (buckets, 3): p50, p95, p99 in ms; NaN where a bucket has no latency.
    latency_percentiles: npt.NDArray[np.float64]
    # Percentiles of the whole range (same quantiles).
    latency_overall: npt.NDArray[np.float64]
    scores: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    score_counts: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.count.sum())

    @property
    def error_rate(self) -> npt.NDArray[np.float64]:
        return _ratio(self.errors, self.count)

    @property
    def error_burn(self) -> npt.NDArray[np.float64]:
        """Error rate over the error budget: 1 spends the budget exactly at its pace."""
        return self.error_rate / self.slo.error_budget

    @property
    def latency_burn(self) -> npt.NDArray[np.float64]:
        """Share of requests over the latency threshold, over the latency budget."""
        return _ratio(self.over_slo, self.with_latency) / self.slo.latency_budget


def _ratio(part: npt.NDArray[np.int64], whole: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(whole > 0, part / np.maximum(whole, 1), np.nan)


class SeriesAccumulator:
    """Builds one app's ``AppSeries`` from pages of its documents (any order)."""

    def __init__(
        self,
        app_id: str,
        slo: SloConfig,
        prices: PriceTable | None = None,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
        min_width_s: int = 1,
    ) -> None:
        if max_buckets < 2:
            raise ValueError(f"max_buckets must be >= 2, got {max_buckets}")
        self.app_id = app_id
        self.slo = slo
        self.prices = prices
        self.max_buckets = max_buckets
        self.width_s = WIDTHS_S[0]
        while self.width_s < min_width_s:
            self.width_s = next_width(self.width_s)
        self.first_key: int | None = None
        self._counters: dict[str, npt.NDArray[np.int64]] = {
            name: np.zeros(0, dtype=np.int64) for name in _COUNTERS
        }
        self._sums: dict[str, npt.NDArray[np.float64]] = {
            name: np.zeros(0, dtype=np.float64) for name in _SUMS
        }
        self._latency = np.zeros((0, histogram.BIN_COUNT), dtype=np.int64)
        self._scores: dict[str, ScoreSample] = {}

    @property
    def buckets(self) -> int:
        return len(self._counters["count"])

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        if not documents:
            return
        seconds = np.array([d.timestamp.timestamp() for d in documents], dtype=np.float64)
        self._cover(int(seconds.min()), int(seconds.max()))
        assert self.first_key is not None
        index = (np.floor(seconds / self.width_s).astype(np.int64) - self.first_key).astype(np.intp)
        size = self.buckets

        def per_bucket(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
            return np.bincount(index[mask], minlength=size).astype(np.int64)

        everything = np.ones(len(documents), dtype=np.bool_)
        errors = np.array([d.status is Status.ERROR for d in documents], dtype=np.bool_)
        latency = np.array(
            [np.nan if d.latency_ms is None else d.latency_ms for d in documents],
            dtype=np.float64,
        )
        measured = np.isfinite(latency)
        with np.errstate(invalid="ignore"):
            over = measured & (latency > self.slo.latency_threshold_ms)
        tokens_in = np.array(
            [np.nan if d.tokens is None else d.tokens.input for d in documents], dtype=np.float64
        )
        tokens_out = np.array(
            [np.nan if d.tokens is None else d.tokens.output for d in documents], dtype=np.float64
        )
        reported = np.isfinite(tokens_in)
        counters = self._counters
        counters["count"] += per_bucket(everything)
        counters["errors"] += per_bucket(errors)
        counters["with_latency"] += per_bucket(measured)
        counters["over_slo"] += per_bucket(over)
        counters["with_tokens"] += per_bucket(reported)
        sums = self._sums
        sums["tokens_in"] += np.bincount(
            index[reported], weights=tokens_in[reported], minlength=size
        )
        sums["tokens_out"] += np.bincount(
            index[reported], weights=tokens_out[reported], minlength=size
        )
        if self.prices is not None:
            price_in, price_out = self.prices.per_token([d.model_id for d in documents])
            cost = tokens_in * price_in + tokens_out * price_out
            priced = reported & np.isfinite(cost)
            sums["cost"] += np.bincount(index[priced], weights=cost[priced], minlength=size)
            counters["unpriced"] += per_bucket(reported & ~priced)
        bins = histogram.bin_of(latency[measured])
        np.add.at(self._latency, (index[measured], bins), 1)
        self._add_scores(documents)

    def _add_scores(self, documents: Sequence[TelemetryDocument]) -> None:
        names: dict[str, list[float]] = {}
        for document in documents:
            for name, value in document.scores.items():
                if math.isfinite(value):
                    names.setdefault(name, []).append(value)
        for name, values in names.items():
            sample = self._scores.get(name)
            if sample is None:
                if len(self._scores) >= MAX_SCORE_NAMES:
                    continue
                sample = self._scores[name] = ScoreSample(seed=len(self._scores))
            sample.add(np.asarray(values, dtype=np.float64))

    def _cover(self, first_s: int, last_s: int) -> None:
        """Make the arrays cover ``[first_s, last_s]``, widening buckets as needed."""
        low = first_s if self.first_key is None else min(first_s, self.first_key * self.width_s)
        high = (
            last_s
            if self.first_key is None
            else max(last_s, (self.first_key + self.buckets) * self.width_s - 1)
        )
        width = self.width_s
        while high // width - low // width + 1 > self.max_buckets:
            width = next_width(width)
        if self.first_key is not None and width != self.width_s:
            self._fold(width)
        self.width_s = width
        first_key, last_key = low // width, high // width
        if self.first_key is None:
            self.first_key = first_key
        before = self.first_key - first_key
        after = last_key - (self.first_key + self.buckets - 1)
        if before > 0 or after > 0:
            self._pad(max(before, 0), max(after, 0))
            self.first_key = min(self.first_key, first_key)

    def _fold(self, width: int) -> None:
        assert self.first_key is not None
        factor = width // self.width_s
        keys = self.first_key + np.arange(self.buckets)
        target = keys // factor
        new_first = int(target[0])
        index = (target - new_first).astype(np.intp)
        size = int(index[-1]) + 1
        for name, values in self._counters.items():
            self._counters[name] = np.bincount(index, weights=values, minlength=size).astype(
                np.int64
            )
        for name, sums in self._sums.items():
            self._sums[name] = np.bincount(index, weights=sums, minlength=size).astype(np.float64)
        latency = np.zeros((size, histogram.BIN_COUNT), dtype=np.int64)
        np.add.at(latency, index, self._latency)
        self._latency = latency
        self.first_key = new_first

    def _pad(self, before: int, after: int) -> None:
        for name, values in self._counters.items():
            self._counters[name] = np.pad(values, (before, after))
        for name, sums in self._sums.items():
            self._sums[name] = np.pad(sums, (before, after))
        self._latency = np.pad(self._latency, ((before, after), (0, 0)))

    def widen_to(self, width_s: int) -> None:
        """Fold into ``width_s`` buckets (a width of the ladder, ≥ the current one): lets
        several apps share one time axis."""
        if width_s < self.width_s:
            raise ValueError(f"cannot narrow buckets from {self.width_s} s to {width_s} s")
        while self.width_s < width_s:
            step = next_width(self.width_s)
            if self.first_key is not None:
                self._fold(step)
            self.width_s = step
        if self.width_s != width_s:
            raise ValueError(f"{width_s} s is not a bucket width of the ladder")

    def finish(self) -> AppSeries:
        first = self.first_key or 0
        starts = [
            datetime.fromtimestamp((first + i) * self.width_s, tz=UTC) for i in range(self.buckets)
        ]
        overall = histogram.percentiles(self._latency.sum(axis=0, keepdims=True), QUANTILES)[0]
        return AppSeries(
            app_id=self.app_id,
            slo=self.slo,
            priced=self.prices is not None,
            width_s=self.width_s,
            starts=starts,
            count=self._counters["count"],
            errors=self._counters["errors"],
            with_latency=self._counters["with_latency"],
            over_slo=self._counters["over_slo"],
            with_tokens=self._counters["with_tokens"],
            unpriced=self._counters["unpriced"],
            tokens_in=self._sums["tokens_in"],
            tokens_out=self._sums["tokens_out"],
            cost=self._sums["cost"],
            latency_percentiles=histogram.percentiles(self._latency, QUANTILES),
            latency_overall=overall,
            scores={name: sample.values for name, sample in sorted(self._scores.items())},
            score_counts={name: sample.seen for name, sample in sorted(self._scores.items())},
        )
