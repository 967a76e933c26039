"""Tail regressions: how often values land far above the baseline, block against block."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from scipy.special import bdtrc

from stream.hotpath.detector import StandardizedDrift, printed
from stream.hotpath.packing import pack_varints, unpack_varints


def upper_tail(hits: int, trials: int, p: float) -> float:
    """P(X ≥ hits) for X ~ Binomial(trials, p): the one-sided p-value of ``hits``."""
    if hits <= 0:
        return 1.0
    return float(bdtrc(hits - 1, trials, p))


class Tail(StandardizedDrift):
    """Counts values more than ``sigmas`` baseline deviations above the baseline mean (the
    *cut*), per block of ``window`` values, and tests each block's count against the blocks
    before it.

    Why not the mean or a quantile's value: a regression of the slowest 1 % of requests (p99
    ×3 on a lognormal latency) moves the mean by 0.15σ, and the detectors of the mean clip
    each value at ±4σ so one outlier cannot carry them; the values that moved are exactly the
    ones clipped. Counting the values beyond a far cut sees them whole: on a lognormal
    latency (σ 0.5) mean + 8 deviations is at the 99.98th percentile, and a p99 ×3 puts the
    whole slowest 1 % beyond it, 50 times as many.

    The test: with ``a`` of the ``n`` values of the tested blocks above the cut and ``b`` of
    the ``m`` values of the reference blocks, under no change every one of the ``a + b``
    exceedances is as likely to fall in either part, so ``a`` is Binomial(a + b, n/(n + m));
    an alarm when P(≥ a) < ``alpha / recent`` (exact, one-sided: only more of the tail is a
    regression). Nothing is assumed about the distribution's shape: a heavy tail (Student t3,
    a lognormal) only makes the counts larger on both sides, and how far out the cut falls
    only changes the power, never the false-alarm rate. The cut comes from the warm-up's
    mean and deviation; the baseline rate is the reference's own count, never estimated.

    Blocks: every ``window`` values the block closes; the newest ``recent`` closed blocks are
    tested (the last one, the last two, ... the last ``recent``: a change is tested with all
    the evidence since it began, and a block that happened to be quiet does not hide it),
    against up to ``reference`` blocks before them (a sliding window, so a slow season moves
    both sides). A block joins the reference only once ``recent`` newer blocks closed
    without an alarm, so a regression does not become its own reference before it is
    found. Testing starts once two blocks are in the reference (1,700 values with the
    defaults).

    Autocorrelated signals are prewhitened (``StandardizedDrift``): the cut is on the AR(1)
    innovation, whose exceedances are independent, as the test needs.

    Calibration (target ≤ 1 false alarm per 100,000 values on every stable family; measured
    with bench/detectors_families.py's generators on the tuning seed 7, 30 series of 100,000
    values per family, none of them the report's held-out seeds): the ``recent`` tests of a
    block share ``alpha`` (Bonferroni), so ``alpha`` 1e-3 per block of 500 bounds the rate
    at 200 × 1e-3 = 0.2 per 100,000 values for independent values of any distribution; the
    p-value of a discrete test is conservative, and at ``sigmas`` 3 (a cut far inside the
    tail, the worst case for discreteness) the measured rates were 0.03-0.23 per 100,000 on
    normal, AR(1) ρ 0.5/0.7/0.9, Student t3, lognormal, integer-quantised and seasonal
    streams, at 5 up to 0.17, at 8 none. ``sigmas`` from the tail family (lognormal σ 0.5,
    slowest 1 % ×3), tuning seeds: recall within 5,000 values 0.63 at 5, 0.93 at 6, 1.00 at
    8 (median delay 598 values), 1.00 at 10 and 12. 8 is the closest cut that finds every
    one: the closest is the most sensitive to growths smaller than ×3, a farther one has
    fewer stable values beyond it to compare with. With ``alpha`` 1e-4 recall was 0.97 (median
    delay 939 values). Held-out results: bench/results/detectors_families.md.
    """

    name: ClassVar[str] = "tail"

    def __init__(
        self,
        sigmas: float = 8.0,
        window: int = 500,
        reference: int = 10,
        recent: int = 4,
        alpha: float = 1e-3,
        warmup: int = 200,
        clip: float = 4.0,
    ) -> None:
        self.sigmas = sigmas
        self.window = window
        self.reference = reference
        self.recent = recent
        self.alpha = alpha
        super().__init__(warmup, clip)

    def _reset_test(self) -> None:
        # Counts above the cut of the closed blocks, oldest first (the newest ``recent`` are
        # tested, the ones before them are the reference), and of the current block.
        self._blocks: list[int] = []
        self._count = 0
        self._filled = 0
        self._cut = 0.0
        # The alarm's test: (hits of the tested blocks, their values, reference hits, its
        # values).
        self._tested = (0, 0, 0, 0)

    def _on_ready(self) -> None:
        # In the tested values' own units: raw (or x - ρ·previous when prewhitened) against
        # one number, no standardising per value.
        self._cut = self._offset + self.sigmas * self._scale

    def update(self, x: float, t: float) -> Self:
        if not self._ready:
            self._learn(x, t)
            return self
        rho = self._rho
        if rho:
            if x - rho * self._prev > self._cut:
                self._count += 1
            self._prev = x
        elif x > self._cut:
            self._count += 1
        filled = self._filled + 1
        if filled >= self.window:
            self._close_block()
        else:
            self._filled = filled
        return self

    def _close_block(self) -> None:
        blocks = self._blocks
        blocks.append(self._count)
        self._count = 0
        self._filled = 0
        if len(blocks) > self.reference + self.recent:
            del blocks[0]
        # The newest blocks (up to ``recent``) against at least two before them: every run
        # of the last j, so a change is tested with all the evidence since it began.
        tested = min(self.recent, len(blocks) - 2)
        if tested < 1:
            return
        before = sum(blocks[:-tested])
        values = (len(blocks) - tested) * self.window
        alpha = self.alpha / self.recent
        hits = 0
        for j in range(1, tested + 1):
            hits += blocks[-j]
            n = j * self.window
            if upper_tail(hits, hits + before, n / (n + values)) < alpha:
                self._tested = (hits, n, before, values)
                self.alarm = True
                self._ready = False
                return

    # -- what a breach reports -------------------------------------------------------------
    @property
    def observed(self) -> float:
        """Share of the tested blocks' values above the cut."""
        hits, n, _, _ = self._tested
        return hits / n if n else 0.0

    @property
    def baseline(self) -> float | None:
        """Share of the reference's values above the cut."""
        _, _, before, values = self._tested
        return before / values if values else None

    @property
    def message_args(self) -> list[Any]:
        """Everything ``describe`` prints: a snapshot keeps these instead of the text."""
        hits, n, before, values = self._tested
        p = upper_tail(hits, hits + before, n / (n + values)) if n else 1.0
        return [hits, n, before, values, self.sigmas, printed(p, 12), self.alpha / self.recent]

    @staticmethod
    def format_message(args: list[Any]) -> str:
        hits, n, before, values, sigmas, p, alpha = args
        return (
            f"{hits} of the last {n} values more than {sigmas:g} baseline deviations above "
            f"the baseline mean, against {before} of the {values} before them (binomial "
            f"p={p:.1e} < {alpha:g}: the tail grew)"
        )

    def describe(self) -> str:
        return self.format_message(self.message_args)

    def _test_state(self) -> list[Any]:
        # The counts as varints: the closed blocks', the current block's, the last test's.
        counts = [*self._blocks, self._count, *self._tested]
        return [pack_varints(counts), self._filled]

    def _load_test_state(self, state: list[Any]) -> None:
        packed, filled = state
        counts = unpack_varints(packed)
        if not 5 <= len(counts) <= self.reference + self.recent + 5:
            raise ValueError("tail state does not match this detector's block counts")
        *blocks, count, hits, n, before, values = counts
        self._blocks = blocks
        self._count = count
        self._tested = (hits, n, before, values)
        self._filled = int(filled)
