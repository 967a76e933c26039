"""Breach lifecycle: one open breach per (app, signal, detector), resolved with hysteresis."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.breach import (
    MAX_SAMPLE_TRACE_IDS,
    Breach,
    BreachSource,
    BreachState,
    breach_id_for,
)
from stream.hotpath.detector import Detector
from stream.hotpath.packing import (
    from_micros,
    micros,
    pack_floats,
    pack_ids,
    unpack_floats,
    unpack_ids,
)
from stream.ports import Observed


class BreachTracker:
    """Turns a detector's alarms into opened/resolved breaches without alert storms.

    An alarm while nothing is open opens a breach; further alarms only keep it open. It
    resolves once the detector has been quiet for ``quiet_events`` updates *and*
    ``quiet_seconds`` of event time (the partition's watermark, so a late event cannot move it
    backwards). The caller only needs to call ``step`` while the detector alarms or a breach
    is open: otherwise it is a no-op.

    A drift detector starts over after an alarm and learns the changed signal as its new
    baseline, so it is quiet during a regression that lasts: quiet alone would resolve the
    breach (and the incident) while the regression goes on, and the next finding would open a
    second incident. With ``hold_events``, a drift breach resolves only once its detector's
    baseline is back to the one the alarm was raised against (``moved_from``); while it is
    still away, the detector relearns (``relearn``) so that it sees when the signal comes
    back. After ``hold_events`` quiet updates a lasting shift is taken as the new normal and
    the breach resolves anyway.
    """

    def __init__(
        self,
        app_id: str,
        signal: str,
        quiet_events: int,
        quiet_seconds: float,
        hold_events: int = 0,
    ) -> None:
        self.app_id = app_id
        self.signal = signal
        self.quiet_events = quiet_events
        self.quiet_seconds = quiet_seconds
        self.hold_events = hold_events
        self.open: Breach | None = None
        self._quiet = 0
        self._last_alarm_t = 0.0
        # (mean, deviation) of the baseline the open breach's alarm was raised against, while
        # its detector may still be away from it (see the class docstring).
        self._held: tuple[float, float] | None = None
        # (open breach, its snapshot form): encoded once per breach, not per snapshot.
        self._packed: tuple[Breach, Any] | None = None
        self._open_args: list[Any] | None = None

    def step(
        self, detector: Detector, t: float, doc: Observed, samples: Iterable[str]
    ) -> Breach | None:
        """Account for the detector's last update (of ``doc``); ``t`` is the watermark and
        ``samples`` the trace ids of recent offending requests, should a breach open."""
        if detector.alarm:
            self._quiet = 0
            self._last_alarm_t = t
            if self.open is None:
                self.open = self._opened(detector, doc, samples)
                if self.hold_events:
                    self._held = getattr(detector, "learnt", None)
                return self.open
            return None
        if self.open is None:
            return None
        self._quiet += 1
        if self._quiet >= self.quiet_events and (
            not self.quiet_seconds or t - self._last_alarm_t >= self.quiet_seconds
        ):
            held = self._held
            if held is not None and self._quiet < self.hold_events:
                moved = detector.moved_from(*held)  # type: ignore[attr-defined]
                if moved is None:
                    return None
                if moved:
                    detector.relearn(t)  # type: ignore[attr-defined]
                    return None
            self._held = None
            opened, self.open = self.open, None
            return opened.model_copy(
                update={
                    "state": BreachState.RESOLVED,
                    "resolved_at": doc.timestamp,
                    "window_end": doc.timestamp,
                    "message": f"{opened.message}; resolved: quiet for {self._quiet} events",
                }
            )
        return None

    @property
    def open_args(self) -> list[Any] | None:
        """The arguments the open breach's message was made of (its detector's
        ``message_args`` when it opened), if the detector has them."""
        return self._open_args

    def _opened(self, detector: Detector, doc: Observed, samples: Iterable[str]) -> Breach:
        opened_by = detector.window_id or doc.id
        # What the message was made of: a snapshot keeps these rather than the text.
        self._open_args = getattr(detector, "message_args", None)
        return self._open_breach(
            detector,
            breach_id_for(self.app_id, self.signal, detector.name, opened_by),
            observed=detector.observed,
            baseline=detector.baseline,
            threshold=detector.limit,
            window_start=datetime.fromtimestamp(detector.window_start, UTC),
            opened_at=doc.timestamp,
            samples=list(samples)[-MAX_SAMPLE_TRACE_IDS:],
            message=detector.describe(),
        )

    def _open_breach(
        self,
        detector: Detector,
        breach_id: str,
        *,
        observed: float,
        baseline: float | None,
        threshold: float | None,
        window_start: datetime,
        opened_at: datetime,
        samples: list[str],
        message: str,
    ) -> Breach:
        """The opened breach of this tracker's (app, signal) and ``detector``; what the
        tracker and detector know is taken from them, the rest is given."""
        return Breach(
            breach_id=breach_id,
            state=BreachState.OPENED,
            severity=detector.severity,
            kind=detector.kind,
            source=BreachSource.HOT,
            app_id=self.app_id,
            signal=self.signal,
            detector=detector.name,
            observed=observed,
            baseline=baseline,
            threshold=threshold,
            window_start=window_start,
            window_end=opened_at,
            opened_at=opened_at,
            sample_trace_ids=samples,
            message=message,
        )

    def state(self, detector: Detector | None = None) -> list[Any]:
        """``[quiet events, last alarm time, open breach]``; the open breach is compact when
        ``detector`` (the one this tracker follows) is given, else its full JSON."""
        if self.open is None:
            opened: Any = None
        elif detector is None:
            opened = self.open.model_dump(mode="json")
        else:
            if self._packed is None or self._packed[0] is not self.open:
                self._packed = (self.open, self._pack(self.open, detector))
            opened = self._packed[1]
        # Without a quiet time (drift breaches) the last alarm's time is never read: 0.
        last_alarm_t = self._last_alarm_t if self.quiet_seconds else 0
        if self._held is None:
            return [self._quiet, last_alarm_t, opened]
        return [self._quiet, last_alarm_t, opened, pack_floats(list(self._held))]

    def load_state(self, state: list[Any], detector: Detector | None = None) -> None:
        quiet, last_alarm_t, opened, *held = state
        self._quiet = int(quiet)
        self._last_alarm_t = float(last_alarm_t)
        self._held = tuple(unpack_floats(held[0])) if held else None  # type: ignore[assignment]
        if opened is None:
            self.open = None
        elif isinstance(opened, dict):
            self.open = Breach.model_validate(opened)
        elif detector is None:
            raise ValueError("a compact open breach needs its detector to be restored")
        else:
            self.open = self._unpack(opened, detector)
            if isinstance(opened[-1], list):
                self._open_args = opened[-1]

    # -- compact open breach -----------------------------------------------------------------
    # An open breach is kept for as long as it is open, in every snapshot: most of its JSON
    # (state, severity, kind, source, app, signal, detector, window end, the message text) is
    # known from the tracker and its detector, so only the rest is written, as
    # [(id, samples), (observed, baseline, window start µs, opened at µs), threshold, message].
    # The encoding is checked once per breach by decoding it: anything it would not give back
    # exactly (a timestamp in another zone, a detector without message arguments) keeps the
    # full JSON instead.
    def _pack(self, opened: Breach, detector: Detector) -> Any:
        args = self._open_args
        message: Any = opened.message
        if args is not None and type(detector).format_message(args) == opened.message:  # type: ignore[attr-defined]
            message = args
        # Observed, baseline (NaN for none) and both times in µs (exact in a double) as bytes.
        baseline = math.nan if opened.baseline is None else opened.baseline
        numbers = [
            opened.observed,
            baseline,
            micros(opened.window_start),
            micros(opened.opened_at),
        ]
        packed = [
            pack_ids([opened.breach_id, *opened.sample_trace_ids]),
            pack_floats(numbers),
            opened.threshold,
            message,
        ]
        full = opened.model_dump(mode="json")
        try:
            same = self._unpack(orjson.loads(orjson.dumps(packed)), detector).model_dump(
                mode="json"
            )
        except (TypeError, ValueError):
            same = None
        return packed if same == full else full

    def _unpack(self, packed: list[Any], detector: Detector) -> Breach:
        ids, numbers, threshold, message = packed
        observed, baseline, start_us, opened_us = unpack_floats(numbers)
        breach_id, *samples = unpack_ids(ids)
        if isinstance(message, list):
            message = type(detector).format_message(message)  # type: ignore[attr-defined]
        opened_at = from_micros(opened_us)
        return self._open_breach(
            detector,
            breach_id,
            observed=observed,
            baseline=None if math.isnan(baseline) else baseline,
            threshold=threshold,
            window_start=from_micros(start_us),
            opened_at=opened_at,
            samples=samples,
            message=str(message),
        )
