"""Distribution drift: a two-sample Kolmogorov-Smirnov test on windows of binned values."""

from __future__ import annotations

import math
from bisect import bisect_right
from functools import cache
from statistics import NormalDist
from typing import Any, ClassVar, Self

import numpy as np

from stream.hotpath.detector import StandardizedDrift, printed
from stream.hotpath.packing import pack_varints, unpack_varints


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
    """Compares each window of ``window`` values with the window ``lag`` windows before it.

    The bins are cut at the baseline mean ± the normal quantiles times the baseline deviation
    (``bins`` equal-probability bins for a normal baseline; any baseline works, only the
    resolution changes). After the warm-up every ``window`` values form a histogram; once
    ``lag`` of them are kept, each new one is compared with the oldest kept (the reference):
    the largest distance between the two cumulative distributions is tested at level
    ``alpha`` (numpy, once per window, never per event). Per event this is a bisect and a
    counter. Distances are measured at the bin edges only, so the statistic is a lower bound
    of the unbinned one: the test is conservative. Catches changes of spread and shape that
    mean-shift detectors miss. ``clip`` is unused here (open-ended outer bins need no
    clipping).

    Why a sliding reference: a reference kept for ever is eventually far from a signal with a
    slow seasonal swing, and the test then fires on the season. With ``lag=2`` the reference
    is the window before the previous one, so a change that starts inside a window is still
    compared whole, one window later, against a reference from before it, while the season
    moves the two only by what it moves in two windows.
    """

    name: ClassVar[str] = "ks"

    def __init__(
        self,
        window: int = 500,
        alpha: float = 0.001,
        bins: int = 32,
        warmup: int = 200,
        clip: float = 4.0,
        lag: int = 2,
    ) -> None:
        self.window = window
        self.alpha = alpha
        self.bins = bins
        self.lag = lag
        self._edges = bin_edges(bins)
        self._critical = critical_distance(alpha, window, window)
        super().__init__(warmup, clip)

    def _reset_test(self) -> None:
        # The last ``lag`` closed windows, oldest first: the first is the reference.
        self._past: list[list[int]] = []
        self._counts = [0] * self.bins
        self._filled = 0
        self._total = 0.0
        self._statistic = 0.0
        self._raw_edges: tuple[float, ...] = ()

    def _on_ready(self) -> None:
        # The cut points in the signal's own units: binning a value is then one bisect, with
        # no standardising (and no clipping: the outer bins are open-ended anyway).
        # Prewhitened (detector.StandardizedDrift): the bins are cut for x - ρ·previous.
        self._raw_edges = tuple(self._offset + self._scale * edge for edge in self._edges)

    def update(self, x: float, t: float) -> Self:
        if not self._ready:
            self._learn(x, t)
            return self
        rho = self._rho
        if rho:
            self._counts[bisect_right(self._raw_edges, x - rho * self._prev)] += 1
            self._prev = x
        else:
            self._counts[bisect_right(self._raw_edges, x)] += 1
        self._total += x
        filled = self._filled + 1
        self._filled = filled
        if filled >= self.window:
            self._close_window()
        return self

    def _close_window(self) -> None:
        counts = self._counts
        level = self._total / self._filled
        self._counts = [0] * self.bins
        self._filled = 0
        self._total = 0.0
        past = self._past
        if len(past) >= self.lag:
            reference = np.cumsum(np.asarray(past[0], dtype=np.float64)) / self.window
            current = np.cumsum(np.asarray(counts, dtype=np.float64)) / self.window
            self._statistic = float(np.max(np.abs(current - reference)))
            if self._statistic > self._critical:
                self._level = level  # the mean of the window that differed
                self.alarm = True
                self._ready = False
                return
            del past[0]
        past.append(counts)

    @property
    def message_args(self) -> list[Any]:
        """Everything ``describe`` prints: a snapshot keeps these instead of the text."""
        return [
            printed(self._statistic, 3),
            printed(self._critical, 3),
            self.window,
            self.lag,
            self.alpha,
        ]

    @staticmethod
    def format_message(args: list[Any]) -> str:
        statistic, critical, window, lag, alpha = args
        gap = (lag - 1) * window
        reference = f"the {window} before them" + (f" but {gap}" if gap else "")
        return (
            f"KS distance {statistic:.3f} > {critical:.3f} between the last "
            f"{window} values and {reference} (alpha={alpha})"
        )

    def describe(self) -> str:
        return self.format_message(self.message_args)

    def _test_state(self) -> list[Any]:
        # The kept windows and the current counts in one packed string (this detector is on
        # every signal, and JSON integers would cost twice as much).
        packed = pack_varints([c for row in (*self._past, self._counts) for c in row])
        return [packed, self._filled, self._total, self._statistic]

    def _load_test_state(self, state: list[Any]) -> None:
        packed, filled, total, statistic = state
        flat = unpack_varints(packed)
        bins = self.bins
        rows = [flat[i : i + bins] for i in range(0, len(flat), bins)]
        if len(flat) % bins or not rows or len(rows) > self.lag + 1:
            raise ValueError("KS state does not match this detector's bins and lag")
        self._past = rows[:-1]
        self._counts = rows[-1]
        self._filled = int(filled)
        self._total = float(total)
        self._statistic = float(statistic)
