"""Latency histograms with logarithmic bins: bounded memory, percentiles within ~3 %.

Bins are 1/40 of a decade wide from 0.1 ms to 10⁷ ms (about 2.8 hours); a value is reported
as its bin's geometric middle, so a percentile is off by at most half a bin (≈ 2.9 %). Values
below the first edge land in bin 0. Values from the last edge up (a request stuck for hours)
land in one more bin, ``OVERFLOW``, whose percentile is infinite: "beyond ``HIGH_MS``" is all
the histogram knows of them, and a middle of the last bin (9,716,280 ms) would be a made-up
figure.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BINS_PER_DECADE = 40
LOW_MS = 0.1
DECADES = 8
HIGH_MS = LOW_MS * 10.0**DECADES
OVERFLOW = BINS_PER_DECADE * DECADES
BIN_COUNT = OVERFLOW + 1
_LOG_LOW = np.log10(LOW_MS)
# Geometric middle of each bin, what a percentile falling in the bin reads as (the overflow
# bin's: infinity).
MIDDLES_MS: npt.NDArray[np.float64] = np.append(
    10.0 ** (_LOG_LOW + (np.arange(OVERFLOW, dtype=np.float64) + 0.5) / BINS_PER_DECADE), np.inf
)


def bin_of(latencies_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """The bin of each latency (finite, ≥ 0); ``OVERFLOW`` from ``HIGH_MS`` up."""
    with np.errstate(divide="ignore"):
        position = (np.log10(latencies_ms) - _LOG_LOW) * BINS_PER_DECADE
    bins: npt.NDArray[np.intp] = np.clip(np.floor(position), 0, BIN_COUNT - 1).astype(np.intp)
    return bins


def percentiles(
    counts: npt.NDArray[np.int64], quantiles: tuple[float, ...]
) -> npt.NDArray[np.float64]:
    """Percentiles of each row of ``counts`` (shape ``(rows, BIN_COUNT)``): shape
    ``(rows, len(quantiles))``, NaN for an empty row, infinity for one beyond ``HIGH_MS``
    (the overflow bin). The q-quantile is the value of rank
    ``ceil(q · n)`` (1-based), as numpy's ``inverted_cdf`` method defines it."""
    rows = counts.shape[0]
    result = np.full((rows, len(quantiles)), np.nan)
    cumulative = np.cumsum(counts, axis=1)
    totals = cumulative[:, -1] if rows else np.zeros(0, dtype=np.int64)
    filled = totals > 0
    for column, q in enumerate(quantiles):
        rank = np.maximum(np.ceil(q * totals), 1)
        # The first bin whose cumulative count reaches the rank, row by row.
        index = (cumulative < rank[:, None]).sum(axis=1)
        result[filled, column] = MIDDLES_MS[np.minimum(index[filled], BIN_COUNT - 1)]
    return result
