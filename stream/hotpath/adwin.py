"""Mean-shift detection with river's ADWIN on standardised values."""

from __future__ import annotations

import base64
import zlib
from typing import Any, ClassVar, Self

from river._river_rust.drift import AdaptiveWindowing

from stream.hotpath.detector import StandardizedDrift, printed
from stream.hotpath.packing import b85


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
    """

    name: ClassVar[str] = "adwin"

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
            min_window_length=5,
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

    def update(self, x: float, t: float) -> Self:
        if not self._ready:
            self._learn(x, t)
            return self
        # _standardise written out (a call per value is a tenth of this update's cost).
        level = self._level
        self._level = level + self.LEVEL_WEIGHT * (x - level)
        z = (x - self._mean) / self._sd
        clip = self.clip
        if z > clip:
            z = clip
        elif z < -clip:
            z = -clip
        width = self._width + 1
        if width > self.max_width:
            self._engine = self._fresh_engine()
            width = 1
            self._held_total = 0.0
            self._dropped = 0
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
            self._effect = kept_mean - dropped_mean
            if abs(self._effect) >= self.min_effect:
                self._shift = kept_mean
                self.alarm = True
                self._ready = False
        return self

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
        return [self._width, self._shift, self._effect, b85(raw)]

    def _load_test_state(self, state: list[Any]) -> None:
        width, shift, effect, encoded = state
        self._shift = float(shift)
        self._effect = float(effect)
        engine = self._fresh_engine()
        engine.__setstate__(zlib.decompress(base64.b85decode(encoded), -15))
        self._engine = engine
        self._width = int(width)
        self._held_total = engine.get_total()
        self._dropped = self._width - int(engine.get_width())
