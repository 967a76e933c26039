"""The shipped ADWIN and Page-Hinkley detect exactly where river's own objects do."""

from __future__ import annotations

import pytest
from river import drift

from stream.hotpath.adwin import Adwin
from stream.hotpath.page_hinkley import PageHinkley

from .streams import T0, shifted

WARMUP = 100


def first_detections(ours: Adwin | PageHinkley, theirs: object, values: list[float]) -> tuple:
    """Feed ours raw values and river the standardised values ours computes after its
    warm-up; return the index of each one's first detection."""
    mine = river_at = None
    for i, x in enumerate(values):
        ours.update(x, T0 + i)
        if mine is None and ours.alarm:
            mine = i
        if i >= WARMUP and river_at is None:
            z = (x - ours._mean) / ours._sd if mine is None or i <= mine else 0.0
            theirs.update(z)  # type: ignore[attr-defined]
            if theirs.drift_detected:  # type: ignore[attr-defined]
                river_at = i
        if mine is not None and river_at is not None:
            break
    return mine, river_at


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("shift", [0.7, 1.5])
def test_adwin_matches_river(seed: int, shift: float) -> None:
    ours = Adwin(delta=0.002, warmup=WARMUP, clip=1e9)
    mine, theirs = first_detections(ours, drift.ADWIN(delta=0.002), shifted(seed, 1500, 800, shift))
    assert mine is not None
    assert mine == theirs


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("alpha", [1 - 0.0001, 1.0])
def test_page_hinkley_matches_river(seed: int, alpha: float) -> None:
    ours = PageHinkley(threshold=20.0, delta=0.2, alpha=alpha, warmup=WARMUP, clip=1e9)
    theirs = drift.PageHinkley(threshold=20.0, delta=0.2, alpha=alpha)
    mine, at = first_detections(ours, theirs, shifted(seed, 1500, 800, 1.0))
    assert mine is not None
    assert mine == at
