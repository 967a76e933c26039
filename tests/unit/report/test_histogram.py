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
