"""A bounded-memory sample of one numeric signal: exact up to a cap, then a log-binned histogram.

Guarantee (stated once here, referenced by every metric that uses it):

* While a window holds at most ``EXACT_CAP`` (100,000) values of a signal, every value is kept
  (float64 chunks, ≤ 800 KB) and percentiles, KS and PSI are **exact**.
* Beyond the cap the values move to fixed log-spaced bins (``RELATIVE_ACCURACY`` α = 0.5 %:
  bin ``i`` covers magnitudes ``(m·γ^(i-1), m·γ^i]`` with ``γ = (1+α)/(1-α)``, ``m = 1e-9``) and
  each value is represented by its bin's midpoint ``2·m·γ^i/(γ+1)``, which is within α of every
  value in the bin (relative). From then on statistics are computed **exactly on the quantised
  values**: each order statistic is within α (relative) of the true one, so a linearly
  interpolated percentile is within α·max(|x_lo|, |x_hi|) of the exact one; KS and PSI are the
  exact statistics of the quantised samples. Magnitudes ≤ 1e-9 count as 0 and magnitudes above
  1e15 are clamped to the top bin (neither occurs for milliseconds, characters or tokens).
  The histogram is 2 × 5,527 + 1 counters (≈ 88 KB) whatever the window size.

Counts and the mean are always exact (the mean up to float rounding: a running sum of page sums).
The switch happens once, at the value that crosses the cap; quantising depends only on the
values, so pages of any size give the same answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from coldpath.policies.columns import FloatArray

EXACT_CAP = 100_000
RELATIVE_ACCURACY = 0.005
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
MIN_MAGNITUDE = 1e-9
MAX_MAGNITUDE = 1e15
_LN_GAMMA = math.log(GAMMA)
# Bins per sign; index layout: negatives (largest magnitude first), zero, positives.
_BINS = math.ceil(math.log(MAX_MAGNITUDE / MIN_MAGNITUDE) / _LN_GAMMA)
_MAGNITUDES = MIN_MAGNITUDE * 2.0 * GAMMA ** np.arange(1, _BINS + 1) / (GAMMA + 1.0)
_REPRESENTATIVES: FloatArray = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])


def bin_index(values: FloatArray) -> npt.NDArray[np.intp]:
    """The histogram slot of each value (see the module docstring for the layout)."""
    magnitude = np.abs(values)
    with np.errstate(divide="ignore"):
        steps = np.ceil(np.log(magnitude / MIN_MAGNITUDE) / _LN_GAMMA)
    steps = np.where(magnitude <= MIN_MAGNITUDE, 0.0, np.clip(steps, 1.0, _BINS))
    signed = np.where(values < 0, -steps, steps)
    return (signed + _BINS).astype(np.intp)


def quantise(values: FloatArray) -> FloatArray:
    """Each value replaced by its bin's representative (within α relative)."""
    return _REPRESENTATIVES[bin_index(values)]


@dataclass(frozen=True)
class Distribution:
    """Sorted distinct values and the cumulative count at each: the ECDF of a sample."""

    values: FloatArray
    cumulative: npt.NDArray[np.int64]

    @property
    def count(self) -> int:
        return int(self.cumulative[-1]) if len(self.cumulative) else 0

    def order_statistic(self, rank: npt.NDArray[np.int64]) -> FloatArray:
        """The values at 0-based ranks of the sorted sample."""
        return self.values[np.searchsorted(self.cumulative, rank, side="right")]

    def quantiles(self, qs: list[float]) -> list[float]:
        """Linear interpolation between order statistics: numpy's default ``method="linear"``
        (Hyndman–Fan type 7), the definition pandas uses too."""
        n = self.count
        position = (n - 1) * np.asarray(qs, dtype=np.float64)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, n - 1)
        below = self.order_statistic(low)
        above = self.order_statistic(high)
        return [float(v) for v in below + (position - low) * (above - below)]

    def cdf(self, points: FloatArray) -> FloatArray:
        """The share of the sample ≤ each point."""
        index = np.searchsorted(self.values, points, side="right")
        counts = np.where(index > 0, self.cumulative[np.maximum(index - 1, 0)], 0)
        return counts / self.count


class Sample:
    """The values of one numeric signal in one window, in bounded memory (module docstring)."""

    def __init__(self, cap: int = EXACT_CAP) -> None:
        self.cap = cap
        self.count = 0
        self._sum = 0.0
        self._chunks: list[FloatArray] = []
        self._bins: npt.NDArray[np.int64] | None = None

    @property
    def exact(self) -> bool:
        return self._bins is None

    @property
    def mean(self) -> float | None:
        return self._sum / self.count if self.count else None

    def add(self, values: FloatArray) -> None:
        """Finite values (callers drop the NaNs that mark missing fields)."""
        if not len(values):
            return
        self.count += len(values)
        self._sum += float(values.sum())
        if self._bins is None:
            self._chunks.append(values)
            if self.count <= self.cap:
                return
            values = np.concatenate(self._chunks)
            self._chunks = []
            self._bins = np.zeros(len(_REPRESENTATIVES), dtype=np.int64)
        self._bins += np.bincount(bin_index(values), minlength=len(_REPRESENTATIVES))

    def distribution(self, quantised: bool = False) -> Distribution:
        """The sample's ECDF: exact values, or quantised ones when ``quantised`` or past the cap
        (two samples are compared on the same footing: both exact or both quantised)."""
        if self._bins is None and not quantised:
            ordered = np.sort(np.concatenate(self._chunks)) if self._chunks else np.empty(0)
            # The last copy of each distinct value carries the cumulative count up to it.
            last = np.append(ordered[1:] != ordered[:-1], len(ordered) > 0)
            return Distribution(ordered[last], np.flatnonzero(last).astype(np.int64) + 1)
        counts = self._histogram()
        occupied = np.flatnonzero(counts)
        return Distribution(_REPRESENTATIVES[occupied], np.cumsum(counts[occupied]))

    def _histogram(self) -> npt.NDArray[np.int64]:
        if self._bins is not None:
            return self._bins
        if not self._chunks:
            return np.zeros(len(_REPRESENTATIVES), dtype=np.int64)
        indices = bin_index(np.concatenate(self._chunks))
        return np.bincount(indices, minlength=len(_REPRESENTATIVES)).astype(np.int64)


def comparable(reference: Sample, current: Sample) -> tuple[Distribution, Distribution, bool]:
    """Both samples' ECDFs on the same footing; the flag says whether they were quantised."""
    quantised = not (reference.exact and current.exact)
    return reference.distribution(quantised), current.distribution(quantised), quantised
