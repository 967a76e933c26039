from __future__ import annotations

import numpy as np

from report import histogram


def test_percentiles_are_within_half_a_bin_of_the_exact_ones() -> None:
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=6.5, sigma=0.8, size=20_000)
    counts = np.bincount(histogram.bin_of(values), minlength=histogram.BIN_COUNT)[None, :]
    found = histogram.percentiles(counts.astype(np.int64), (0.5, 0.95, 0.99))[0]
    exact = np.percentile(values, [50, 95, 99], method="inverted_cdf")
    half_bin = 10 ** (0.5 / histogram.BINS_PER_DECADE)
    assert np.all(found / exact <= half_bin) and np.all(exact / found <= half_bin)


def test_an_empty_row_has_no_percentiles_and_extremes_land_in_the_edge_bins() -> None:
    assert list(histogram.bin_of(np.array([0.0, 1e-9, 1e12]))) == [0, 0, histogram.BIN_COUNT - 1]
    counts = np.zeros((2, histogram.BIN_COUNT), dtype=np.int64)
    counts[1, 10] = 3
    found = histogram.percentiles(counts, (0.5,))
    assert np.isnan(found[0, 0])
    assert found[1, 0] == histogram.MIDDLES_MS[10]


def test_a_percentile_beyond_the_range_is_infinite_not_the_last_bins_middle() -> None:
    # Two of 100 requests stuck for ~14 hours: the p99 is beyond the histogram's 10⁷ ms, and
    # nothing within it (the last bin's middle read 9,716,280 ms) says how far.
    values = np.array([100.0] * 98 + [5e7, 5e7])
    counts = np.bincount(histogram.bin_of(values), minlength=histogram.BIN_COUNT)[None, :]
    p95, p99 = histogram.percentiles(counts.astype(np.int64), (0.95, 0.99))[0]
    assert p95 == histogram.MIDDLES_MS[histogram.bin_of(np.array([100.0]))[0]]
    assert p99 == np.inf
    # Up to the top edge a value keeps its bin: the last one below the overflow.
    edges = histogram.bin_of(np.array([0.999 * histogram.HIGH_MS, histogram.HIGH_MS]))
    assert list(edges) == [histogram.OVERFLOW - 1, histogram.OVERFLOW]
