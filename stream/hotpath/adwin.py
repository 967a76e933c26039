"""Mean-shift detection with river's ADWIN on standardised values."""

from __future__ import annotations

import base64
import math
import zlib
from typing import Any, ClassVar, Self

from river._river_rust.drift import AdaptiveWindowing

from stream.hotpath.detector import StandardizedDrift, printed
from stream.hotpath.packing import b85, pack_floats, unpack_floats


class Adwin(StandardizedDrift):
    """river's ADWIN (Bifet & Gavaldà 2007) behind the hot-path protocol.

    This drives the Rust engine that ``river.drift.ADWIN`` wraps (a private module of the
    pinned river release) because the Python wrapper doubles the cost of an update (0.25 →
    0.55 µs here); tests/unit/stream/hotpath checks that detections match
    ``river.drift.ADWIN`` index for index. ADWIN's own bound has a term that does not scale
    with the data, so it is fed standardised values.

    ADWIN cuts its window whenever the means of an old and a recent part differ
    significantly, however small the difference: given enough values, a slow seasonal swing
    of a quarter of a deviation is "significant". A cut is only an alarm when the dropped
    and the kept part differ by at least ``min_effect`` baseline deviations; a smaller cut is
    adaptation: the window keeps the recent part and detection carries on, with no alarm
    (so a slow drift is followed, a step is reported). After an alarm it starts over with a
    new baseline and a fresh engine (river's wrapper also resets its engine after a drift).
    Past ``max_width`` values it starts a fresh window, so the state stays bounded (it grows
    with the log of the width, times ``max_buckets``: buckets kept per size, river's
    default is 5).

    A fresh window alone would be blind to a step near the restart: one that lands a few
    dozen values before it leaves the old window too few changed values to cut on and the
    new one none of the old level, one just after it leaves the new window too few of the old
    level. So the old window's count, mean and variance are kept as a reference for the
    first ``max_width // 4`` values of the new window, and every ``clock`` values the new
    window is tested against it with ADWIN's own bound for one split (same ``delta``) and
    the same ``min_effect``. Past that span the new window holds enough of its own history
    for ADWIN to find a later change by itself.
    """

    name: ClassVar[str] = "adwin"
    # river's min_window_length: the smallest part of a window ADWIN compares.
    MIN_PART: ClassVar[int] = 5

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_width: int = 10_000,
        warmup: int = 200,
        clip: float = 4.0,
        min_effect: float = 0.0,
        max_buckets: int = 5,
    ) -> None:
        self.delta = delta
        self.clock = clock
        self.max_width = max_width
        self.min_effect = min_effect
        self.max_buckets = max_buckets
        super().__init__(warmup, clip)

    def _fresh_engine(self) -> AdaptiveWindowing:
        # river's defaults for the other arguments (min_window_length=5, and a grace period
        # of 10 values).
        return AdaptiveWindowing(
            delta=self.delta,
            clock=self.clock,
            max_buckets=self.max_buckets,
            min_window_length=self.MIN_PART,
            grace_period=10,
        )

    def _reset_test(self) -> None:
        self._engine = self._fresh_engine()
        self._width = 0
        self._shift = 0.0
        self._effect = 0.0
        # Sum and count of what the engine holds, kept alongside it: at a cut, the engine
        # only tells what it kept, and the dropped part is the difference. The engine adds
        # the same values in the same order, so its own total is this one, bit for bit: a
        # restored detector reads both back from the engine instead of the snapshot.
        self._held_total = 0.0
        # Values of this engine's window dropped at cuts: it holds ``_width - _dropped``
        # (one counter per value fewer than counting what it holds).
        self._dropped = 0
        # The previous window as [count, mean, variance] while the new one is tested against
        # it (its first ``_reference_span`` values), else None.
        self._reference: list[float] | None = None
        # The next width at which something besides the engine's update is due (the restart,
        # or a reference test): one comparison per value.
        self._due = self.max_width + 1

    def update(self, x: float, t: float) -> Self:
        if not self._ready:
            self._learn(x, t)
            return self
        # _standardise written out (a call per value is a tenth of this update's cost).
        level = self._level
        self._level = level + self.LEVEL_WEIGHT * (x - level)
        # Prewhitened when autocorrelated (detector.StandardizedDrift); else (x - mean) / sd.
        rho = self._rho
        if rho:
            z = (x - rho * self._prev - self._offset) / self._scale
            self._prev = x
        else:
            z = (x - self._offset) / self._scale
        clip = self.clip
        if z > clip:
            z = clip
        elif z < -clip:
            z = -clip
        width = self._width + 1
        if width >= self._due:
            width = self._at_due(width)
            if self.alarm:
                return self
        self._width = width
        self._held_total += z
        if self._engine.update(z):
            engine = self._engine
            # After a cut the window holds the values since the change: their mean, in
            # baseline deviations, is the new level.
            kept = engine.get_width()
            kept_total = engine.get_total()
            dropped = width - self._dropped - kept
            kept_mean = kept_total / kept if kept else 0.0
            dropped_mean = (self._held_total - kept_total) / dropped if dropped else 0.0
            self._held_total = kept_total
            self._dropped = width - int(kept)
            # In baseline deviations of the signal (the gain undoes the prewhitening's).
            self._effect = (kept_mean - dropped_mean) * self._gain()
            if abs(self._effect) >= self.min_effect:
                self._shift = kept_mean * self._gain()
                self.alarm = True
                self._ready = False
        return self

    def _at_due(self, width: int) -> int:
        """Restart or test against the reference, as due at ``width``; the width this value
        takes."""
        if width > self.max_width:
            self._restart()
            width = 1
        else:
            self._test_reference()
        self._schedule(width)
        return width

    def _schedule(self, width: int) -> None:
        clock = self.clock
        check = (width // clock + 1) * clock
        self._due = check if check <= self._reference_span() else self.max_width + 1

    def _reference_span(self) -> int:
        """Values of a new window tested against the reference (0 without one)."""
        return 0 if self._reference is None else self.max_width // 4

    def _restart(self) -> None:
        old = self._engine
        kept = old.get_width()
        self._reference = [kept, old.get_total() / kept, old.variance_in_window] if kept else None
        self._engine = self._fresh_engine()
        self._held_total = 0.0
        self._dropped = 0

    def _test_reference(self) -> None:
        """The new window against the one before the restart (ADWIN's bound for one split
        between them); an alarm like a cut's."""
        reference = self._reference
        engine = self._engine
        n1 = engine.get_width()
        if reference is None or n1 < 2 * self.MIN_PART:
            return
        n0, mean0, var0 = reference
        mean1 = engine.get_total() / n1
        diff = mean1 - mean0
        if abs(diff) * self._gain() < self.min_effect:
            return
        n = n0 + n1
        variance = (n0 * var0 + n1 * engine.variance_in_window) / n + n0 * n1 * (diff / n) ** 2
        m = 1.0 / (n0 - self.MIN_PART + 1) + 1.0 / (n1 - self.MIN_PART + 1)
        dd = math.log(2.0 * math.log(n) / self.delta)
        bound = math.sqrt(2.0 * m * variance * dd) + 2.0 / 3.0 * dd * m
        if abs(diff) > bound:
            self._effect = diff * self._gain()
            self._shift = mean1 * self._gain()
            self.alarm = True
            self._ready = False

    @property
    def effect(self) -> float:
        """Mean of the kept minus mean of the dropped part at the last cut, in baseline
        deviations (0 before any cut); an alarm needs ``abs(effect) >= min_effect``."""
        return self._effect

    @property
    def message_args(self) -> list[Any]:
        """Everything ``describe`` prints: a snapshot keeps these instead of the text."""
        return [self.delta, printed(self._shift, 2), self.clip, printed(self._effect, 2)]

    @staticmethod
    def format_message(args: list[Any]) -> str:
        delta, shift, clip, effect = args
        return (
            f"ADWIN cut its window (delta={delta}): recent mean "
            f"{shift:+.2f} baseline deviations (clipped at ±{clip}) from the "
            f"baseline, {effect:+.2f} from the values before the cut"
        )

    def describe(self) -> str:
        return self.format_message(self.message_args)

    def _test_state(self) -> list[Any]:
        # The engine's own serialisation (what its pickle support uses): compact bincode of
        # the bucket rows, no Python objects. It is tied to river's version; the snapshot
        # records that version and refuses another.
        # Raw deflate (no zlib header and checksum: the snapshot is checked as a whole), at
        # the default level: level 9 saves 6 bytes and doubles the time.
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        raw = deflate.compress(self._engine.__getstate__()) + deflate.flush()
        state = [self._width, self._shift, self._effect, b85(raw)]
        if self._reference is not None and self._width < self._reference_span():
            state.append(pack_floats(self._reference))
        return state

    def _load_test_state(self, state: list[Any]) -> None:
        width, shift, effect, encoded, *reference = state
        self._shift = float(shift)
        self._effect = float(effect)
        engine = self._fresh_engine()
        engine.__setstate__(zlib.decompress(base64.b85decode(encoded), -15))
        self._engine = engine
        self._width = int(width)
        self._held_total = engine.get_total()
        self._dropped = self._width - int(engine.get_width())
        self._reference = unpack_floats(reference[0]) if reference else None
        self._schedule(self._width)
