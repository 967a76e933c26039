"""The Detector protocol every hot-path detector implements, and the standardising base of the
drift detectors.

A detector sees one signal of one app, one value at a time, in partition order. ``update(x, t)``
takes the value and its event time (seconds since the epoch) and returns the detector; the
outcome of that update is read from properties. ``alarm`` is the only thing the breach
lifecycle acts on: for a drift detector it is true on the update that detected a change, for a
burn-rate detector while its condition holds.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol, Self

from schemas.breach import BreachKind, Severity
from stream.hotpath.packing import pack_floats, unpack_floats


def printed(value: float, decimals: int) -> float:
    """``value`` as a message prints it with ``decimals`` fixed decimals: formatting the result
    the same way gives the same text (the shortest double of a decimal prints back to it), and
    a snapshot keeps fewer digits of it."""
    return float(f"{value:.{decimals}f}")


class Detector(Protocol):
    @property
    def name(self) -> str:
        """Stable name: part of the breach id, so never rename a shipped detector."""
        ...

    @property
    def kind(self) -> BreachKind: ...

    def update(self, x: float, t: float) -> Self: ...

    @property
    def alarm(self) -> bool:
        """The condition holds after the last update."""
        ...

    @property
    def severity(self) -> Severity: ...

    @property
    def observed(self) -> float:
        """The value the alarm is about, in the signal's units (or a rate for burn rules)."""
        ...

    @property
    def baseline(self) -> float | None: ...

    @property
    def limit(self) -> float | None:
        """What ``observed`` was compared against (the breach's threshold), if comparable."""
        ...

    @property
    def window_start(self) -> float:
        """Event time where the evidence of the current alarm begins."""
        ...

    @property
    def window_id(self) -> str | None:
        """Identity of the event-time window that raised the alarm; None for event-based
        detectors, whose breaches are identified by the document that opened them."""
        ...

    @property
    def offending(self) -> bool:
        """The last value counts against the signal (its trace id is a useful sample)."""
        ...

    def describe(self) -> str:
        """One line for the breach message."""
        ...

    def state(self) -> Any:
        """Explicit, JSON-serialisable state (lists for the shipped detectors: no keys);
        ``load_state`` of a fresh detector built with the same configuration continues
        exactly."""
        ...

    def load_state(self, state: Any) -> None: ...


class Updated:
    """What HotPath touches on every value: ``update`` and then ``alarm``; the shipped
    detectors derive from it.

    Compiled (setup.py), a call through this class goes straight to the subclass's code, its
    floats unboxed, and ``alarm`` is read from the instance's struct: through the Protocol each
    is a lookup by name on a boxed call, the larger part of what the engine's loop costs per
    event. A detector that only follows the Protocol works with the breach lifecycle but not
    in HotPath, which refuses it.
    """

    # A plain attribute, not a property: the engine reads it after every update.
    alarm: bool

    def update(self, x: float, t: float) -> Self:
        raise NotImplementedError


class StandardizedDrift(Updated):
    """Base of the drift detectors: learns a baseline, then tests standardised values.

    The first ``warmup`` values give the baseline mean and standard deviation (Welford); after
    that each value becomes ``z = (x - mean) / sd`` clipped to ±``clip`` and goes to the
    subclass's test.

    Autocorrelation: the tests assume independent values, and a signal that drifts slowly
    with load (AR(1) with ρ = 0.9: a mean over 100 values varies like one over 5) looks to
    them like a run of changes. So the warm-up also measures the lag-1 autocorrelation; from
    ``MIN_RHO`` on the tests see the prewhitened value instead, the AR(1) innovation
    ``(x - ρ·previous - (1-ρ)·mean) / (sd·sqrt(1-ρ²))``, independent N(0, 1) on such a
    baseline. A lasting shift of Δ deviations moves the innovations by Δ/``gain`` (``gain`` =
    sqrt((1+ρ)/(1-ρ)), 4.4 at ρ = 0.9: the information the dependence leaves); effects
    are reported multiplied back by ``gain``, in baseline deviations. Below ``MIN_RHO`` (an
    independent 200-value warm-up exceeds 0.2 about once in 400) ρ is 0 and ``x - 0·previous``
    is ``x`` exactly, so independent signals are tested as before (the subclasses skip the
    product then: it costs a tenth of an update).

    After a detection the detector starts over: the new level becomes the next baseline, so
    one change is reported once. Subclasses write ``update`` out in full (standardise, test)
    because one more Python call per value is a measurable share of the hot path's budget;
    ``_learn`` handles the warm-up.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[BreachKind] = BreachKind.DRIFT
    # Weight of the moving average of raw values reported as the observed level of an alarm
    # (about the last ten values; the tests themselves see clipped, standardised values).
    LEVEL_WEIGHT: ClassVar[float] = 0.1
    # Prewhitening from this lag-1 autocorrelation on (see the class docstring), capped at
    # MAX_RHO (a warm-up inside a trend measures ρ near 1, and the gain would explode).
    MIN_RHO: ClassVar[float] = 0.2
    MAX_RHO: ClassVar[float] = 0.95
    # A baseline learnt after an alarm is "back" to the one the alarm was raised against
    # when its mean is within this many of the old deviations and its deviation within this
    # factor (``moved_from``). A 200-value warm-up's mean of an independent signal errs by
    # 0.07σ and its deviation by 5 %; 0.3σ is ADWIN's minimum effect, the smallest shift an
    # alarm is about, and ×1.3 lies between that error and variance ×2 (sd ×1.41). 0.5σ let
    # a slow ramp caught early (at 0.3-0.5σ) look back and open a second incident further up
    # (8 extra incidents in 30 series of a 1σ ramp over 5,000 values, 2 at 0.3σ, 16 without
    # the hold: bench/detectors_families.py). A noisier warm-up (AR(1) ρ 0.9: 0.31σ) only
    # means more relearning before a false alarm's breach resolves.
    BACK_LEVEL: ClassVar[float] = 0.3
    BACK_SPREAD: ClassVar[float] = 1.3

    def __init__(self, warmup: int, clip: float) -> None:
        self.warmup = warmup
        self.clip = clip
        self.alarm = False
        self._start_over(0.0)

    def _start_over(self, t: float) -> None:
        self._ready = False
        self._seen = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._sd = 1.0
        self._start_t = t
        self._level = 0.0
        # Lag-1 autocorrelation: during the warm-up the first value, the sum of products of
        # consecutive deviations from it; after it ρ and what the test standardises with.
        self._first = 0.0
        self._cross = 0.0
        self._prev = 0.0
        self._rho = 0.0
        self._offset = 0.0
        self._scale = 1.0
        self._reset_test()

    def _learn(self, x: float, t: float) -> None:
        """Warm-up step (also the first step after a detection)."""
        if self.alarm:
            self.alarm = False
            self._start_over(t)
        seen = self._seen
        if seen == 0:
            self._start_t = t
            self._level = x
            self._first = x
        else:
            self._level += self.LEVEL_WEIGHT * (x - self._level)
            self._cross += (x - self._first) * (self._prev - self._first)
        self._prev = x
        seen += 1
        self._seen = seen
        delta = x - self._mean
        self._mean += delta / seen
        self._m2 += delta * (x - self._mean)
        if seen >= self.warmup:
            sd = (self._m2 / (seen - 1)) ** 0.5 if seen > 1 else 0.0
            # A constant baseline still needs a scale: any change from it is large.
            self._sd = max(sd, 1e-9 * max(1.0, abs(self._mean)))
            self._rho = self._autocorrelation()
            self._whiten()
            self._ready = True
            self._on_ready()

    def _autocorrelation(self) -> float:
        """Lag-1 autocorrelation of the warm-up, 0 below ``MIN_RHO``, capped at ``MAX_RHO``."""
        n = self._seen
        if n < 3 or not self._m2:
            return 0.0
        # Deviations from the first value d = x - first (d of the first value is 0), last
        # value d_n: sum over consecutive pairs of (d_t - m)(d_t-1 - m), m their mean.
        m = self._mean - self._first
        last = self._prev - self._first
        pairs = self._cross - m * (2.0 * n * m - last) + (n - 1) * m * m
        rho = (pairs / (n - 1)) / (self._m2 / n)
        if rho < self.MIN_RHO:
            return 0.0
        return min(rho, self.MAX_RHO)

    def _whiten(self) -> None:
        """What ``z`` is computed with, from mean, sd and ρ."""
        rho = self._rho
        self._offset = (1.0 - rho) * self._mean
        self._scale = self._sd * math.sqrt(1.0 - rho * rho)

    def _standardise(self, x: float) -> float:
        """Past warm-up: track the raw level and return ``x`` in baseline deviations,
        clipped to ±clip (so one outlier cannot carry a mean-shift test)."""
        self._level += self.LEVEL_WEIGHT * (x - self._level)
        rho = self._rho
        if rho:
            z = (x - rho * self._prev - self._offset) / self._scale
            self._prev = x
        else:
            z = (x - self._offset) / self._scale
        clip = self.clip
        if z > clip:
            return clip
        if z < -clip:
            return -clip
        return z

    def _gain(self) -> float:
        """How much larger a lasting shift is in baseline deviations than in the tested
        (prewhitened) values: sqrt((1+ρ)/(1-ρ)), 1 for independent values."""
        rho = self._rho
        return math.sqrt((1.0 + rho) / (1.0 - rho))

    @property
    def learnt(self) -> tuple[float, float]:
        """(mean, deviation) of the baseline the detector tests against; on an alarm's
        update, the one the alarm was raised against."""
        return self._mean, self._sd

    def moved_from(self, mean: float, sd: float) -> bool | None:
        """Whether the baseline learnt since the last start-over is away from ``(mean, sd)``
        (level or spread still shifted); None while it is being learnt."""
        if not self._ready:
            return None
        spread = self._sd / sd if sd else math.inf
        return (
            abs(self._mean - mean) > self.BACK_LEVEL * sd
            or not 1.0 / self.BACK_SPREAD <= spread <= self.BACK_SPREAD
        )

    def relearn(self, t: float) -> None:
        """Start over: the next values are a new warm-up (the breach lifecycle asks for this
        while a breach stays open on a shifted baseline, to see whether it came back)."""
        self.alarm = False
        self._start_over(t)

    # -- hooks of the subclasses -------------------------------------------------------------
    def _reset_test(self) -> None:
        raise NotImplementedError

    def _on_ready(self) -> None:
        """The baseline is known (end of warm-up, or a restored detector past it)."""

    def _test_state(self) -> list[Any]:
        raise NotImplementedError

    def _load_test_state(self, state: list[Any]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    # -- the protocol --------------------------------------------------------------------------
    @property
    def severity(self) -> Severity:
        return Severity.WARNING

    @property
    def observed(self) -> float:
        """Recent level of the signal, in its units (moving average of the raw values)."""
        return self._level

    @property
    def baseline(self) -> float | None:
        return self._mean

    @property
    def limit(self) -> float | None:
        return None

    @property
    def window_start(self) -> float:
        return self._start_t

    @property
    def window_id(self) -> str | None:
        return None

    @property
    def offending(self) -> bool:
        return True

    @property
    def warmed_up(self) -> bool:
        return self._ready

    @property
    def autocorrelation(self) -> float:
        """The lag-1 autocorrelation the tests prewhiten with (0: none), from the warm-up."""
        return self._rho

    def state(self) -> list[Any]:
        # Lists rather than objects: this is most of a snapshot, and keys would double it.
        # While warming up the second number is the running sum of squares, after it the
        # deviation (the sum is no longer needed).
        # The four floats as their bytes (packing): full-precision means and deviations
        # cost up to 18 digits each in JSON.
        # After an alarm (not ready until the next update starts over) the deviation is
        # still the one the alarm was measured with.
        learnt = self._seen >= self.warmup
        spread = self._sd if learnt else self._m2
        floats = [self._mean, spread, self._start_t, self._level]
        # The autocorrelation's sums while warming up; ρ and the previous value after it,
        # when prewhitening (independent signals keep the four numbers).
        if not learnt:
            floats += [self._first, self._cross, self._prev]
        elif self._rho:
            floats += [self._rho, self._prev]
        numbers = pack_floats(floats)
        # The flag as 0/1: "false" is five bytes, on every detector of every signal.
        return [int(self.alarm), self._seen, numbers, self._test_state()]

    def load_state(self, state: list[Any]) -> None:
        alarm, seen, numbers, test = state
        mean, spread, start_t, level, *correlation = unpack_floats(numbers)
        self.alarm = bool(alarm)
        self._seen = int(seen)
        learnt = self._seen >= self.warmup
        # A snapshot taken on an alarm's update: the next update starts over, as it would
        # have without the restart.
        self._ready = learnt and not self.alarm
        self._mean = float(mean)
        self._m2 = 0.0 if learnt else float(spread)
        self._sd = float(spread) if learnt else 1.0
        self._start_t = float(start_t)
        self._level = float(level)
        self._first = self._cross = self._prev = self._rho = 0.0
        if not learnt:
            self._first, self._cross, self._prev = correlation
        elif correlation:
            self._rho, self._prev = correlation
        self._whiten()
        self._load_test_state(test)
        if self._ready:
            self._on_ready()
