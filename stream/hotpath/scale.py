"""Spread (scale) change detection: Page-Hinkley on the magnitude of the standardised values."""

from __future__ import annotations

from typing import Any, ClassVar

from stream.hotpath.page_hinkley import PageHinkley


class Scale(PageHinkley):
    """The Page-Hinkley test (no fading) fed ``|z|`` (standardised, prewhitened, clipped).

    A change of spread leaves the mean alone, so a mean-shift test misses it; it moves the
    mean magnitude: sd ×√2 (variance ×2) takes E|z| of a normal from 0.80 to 1.13. A lasting
    mean shift moves it too (1σ: 0.80 → 1.17), and so does a ramp, gradually: the cumulative
    sums add up a slow ramp that the mean test, whose cuts of it each fall below its minimum
    effect, follows as adaptation. Its findings are evidence of the same incident as ADWIN's
    and the KS test's. The test's cumulative mean of |z| is its reference; its state is a
    few numbers (ADWIN on |z| found the same changes with four times the state).

    Calibration (measured with /tmp scripts mirroring bench/detectors.py, seeds apart from the
    unit tests'): ``delta`` 0.15 (about half the change at variance ×2) and ``threshold`` 40
    gave no false alarm on 3 × 100,000 values of each stable family (normal, lognormal,
    Student t3, integer-rounded lognormal, seasonal ±0.25σ, AR(1) ρ = 0.9); threshold 25 gave
    0.33 per 100,000 on lognormal, 15 up to 1.3. At 40 it found variance ×2 in 30 of 30
    series (median 215 values), variance ×4 in 30 of 30 (58), a 1σ ramp over 5,000 values
    within 5,000 values of its start in 29 of 30, over 20,000 within 25,000 in 30 of 30.
    """

    name: ClassVar[str] = "scale"
    MAGNITUDE: ClassVar[bool] = True

    @staticmethod
    def format_message(args: list[Any]) -> str:
        size, threshold, up = args
        direction = "grew" if up else "shrank"
        return (
            f"Page-Hinkley statistic of the deviations' size {size:.1f} > {threshold} "
            f"(spread {direction}, or the level moved)"
        )
