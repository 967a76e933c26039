"""Distribution drift: a two-sample Kolmogorov-Smirnov test on windows of binned values."""

from __future__ import annotations

import math
from bisect import bisect_right
from functools import cache
from statistics import NormalDist
from typing import Any, ClassVar, Self

import numpy as np

from stream.hotpath.detector import StandardizedDrift


@cache
def bin_edges(bins: int) -> tuple[float, ...]:
    """Equal-probability cut points of a standard normal, in baseline deviations: a window
    costs ``bins`` counters instead of its values."""
    unit = NormalDist()
    return tuple(unit.inv_cdf(k / bins) for k in range(1, bins))


def critical_distance(alpha: float, n: int, m: int) -> float:
    """Asymptotic two-sample KS critical value: c(α)·sqrt((n+m)/(n·m))."""
    return math.sqrt(-math.log(alpha / 2.0) / 2.0) * math.sqrt((n + m) / (n * m))


class WindowedKS(StandardizedDrift):
    """Compares each window of ``window`` values with a reference window.

    The bins are cut at the baseline mean ± the normal quantiles times the baseline deviation
    (``bins`` equal-probability bins for a normal baseline; any baseline works, only the
    resolution changes). After the warm-up, the next ``window`` values form the reference
    histogram; every further ``window`` values form a current histogram, and the largest
    distance between the two cumulative distributions is tested at level ``alpha`` (numpy,
    once per window, never per event). Per event this is a bisect and a counter. Distances
    are measured at the bin edges only, so the statistic is a lower bound of the unbinned
    one: the test is conservative. Catches changes of spread and shape that mean-shift
    detectors miss. ``clip`` is unused here (open-ended outer bins need no clipping).
    """

    name: ClassVar[str] = "ks"

    def __init__(
        self,
        window: int = 500,
        alpha: float = 0.001,
        bins: int = 32,
        warmup: int = 200,
        clip: float = 4.0,
    ) -> None:
        self.window = window
        self.alpha = alpha
        self.bins = bins
        self._edges = bin_edges(bins)
        self._critical = critical_distance(alpha, window, window)
        super().__init__(warmup, clip)

    def _reset_test(self) -> None:
        self._reference: list[int] | None = None
        self._counts = [0] * self.bins
        self._filled = 0
        self._total = 0.0
        self._statistic = 0.0
        self._raw_edges: tuple[float, ...] = ()

    def _on_ready(self) -> None:
        # The cut points in the signal's own units: binning a value is then one bisect, with
        # no standardising (and no clipping: the outer bins are open-ended anyway).
        self._raw_edges = tuple(self._mean + self._sd * edge for edge in self._edges)

    def update(self, x: float, t: float) -> Self:
        if not self._ready:
            self._learn(x, t)
            return self
        self._counts[bisect_right(self._raw_edges, x)] += 1
        self._total += x
        self._filled += 1
        if self._filled >= self.window:
            self._close_window()
        return self

    def _close_window(self) -> None:
        counts = self._counts
        level = self._total / self._filled
        self._counts = [0] * self.bins
        self._filled = 0
        self._total = 0.0
        if self._reference is None:
            self._reference = counts
            return
        reference = np.cumsum(np.asarray(self._reference, dtype=np.float64)) / self.window
        current = np.cumsum(np.asarray(counts, dtype=np.float64)) / self.window
        self._statistic = float(np.max(np.abs(current - reference)))
        if self._statistic > self._critical:
            self._level = level  # the mean of the window that differed
            self._alarm = True
            self._ready = False

    def describe(self) -> str:
        return (
            f"KS distance {self._statistic:.3f} > {self._critical:.3f} between the last "
            f"{self.window} values and the reference window (alpha={self.alpha})"
        )

    def _test_state(self) -> list[Any]:
        return [self._reference, self._counts, self._filled, self._total, self._statistic]

    def _load_test_state(self, state: list[Any]) -> None:
        reference, counts, filled, total, statistic = state
        self._reference = None if reference is None else [int(c) for c in reference]
        self._counts = [int(c) for c in counts]
        self._filled = int(filled)
        self._total = float(total)
        self._statistic = float(statistic)
