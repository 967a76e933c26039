"""Breach lifecycle: one open breach per (app, signal, detector), resolved with hysteresis."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from schemas.breach import (
    MAX_SAMPLE_TRACE_IDS,
    Breach,
    BreachSource,
    BreachState,
    breach_id_for,
)
from schemas.document import TelemetryDocument
from stream.hotpath.detector import Detector


class BreachTracker:
    """Turns a detector's alarms into opened/resolved breaches without alert storms.

    An alarm while nothing is open opens a breach; further alarms only keep it open. It
    resolves once the detector has been quiet for ``quiet_events`` updates *and*
    ``quiet_seconds`` of event time (the partition's watermark, so a late event cannot move it
    backwards). The caller only needs to call ``step`` while the detector alarms or a breach
    is open: otherwise it is a no-op.
    """

    def __init__(self, app_id: str, signal: str, quiet_events: int, quiet_seconds: float) -> None:
        self.app_id = app_id
        self.signal = signal
        self.quiet_events = quiet_events
        self.quiet_seconds = quiet_seconds
        self.open: Breach | None = None
        self._quiet = 0
        self._last_alarm_t = 0.0

    def step(
        self, detector: Detector, t: float, doc: TelemetryDocument, samples: Iterable[str]
    ) -> Breach | None:
        """Account for the detector's last update (of ``doc``); ``t`` is the watermark and
        ``samples`` the trace ids of recent offending requests, should a breach open."""
        if detector.alarm:
            self._quiet = 0
            self._last_alarm_t = t
            if self.open is None:
                self.open = self._opened(detector, doc, samples)
                return self.open
            return None
        if self.open is None:
            return None
        self._quiet += 1
        if self._quiet >= self.quiet_events and t - self._last_alarm_t >= self.quiet_seconds:
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

    def _opened(self, detector: Detector, doc: TelemetryDocument, samples: Iterable[str]) -> Breach:
        opened_by = detector.window_id or doc.id
        return Breach(
            breach_id=breach_id_for(self.app_id, self.signal, detector.name, opened_by),
            state=BreachState.OPENED,
            severity=detector.severity,
            kind=detector.kind,
            source=BreachSource.HOT,
            app_id=self.app_id,
            signal=self.signal,
            detector=detector.name,
            observed=detector.observed,
            baseline=detector.baseline,
            threshold=detector.limit,
            window_start=datetime.fromtimestamp(detector.window_start, UTC),
            window_end=doc.timestamp,
            opened_at=doc.timestamp,
            sample_trace_ids=list(samples)[-MAX_SAMPLE_TRACE_IDS:],
            message=detector.describe(),
        )

    def state(self) -> list[Any]:
        opened = None if self.open is None else self.open.model_dump(mode="json")
        return [self._quiet, self._last_alarm_t, opened]

    def load_state(self, state: list[Any]) -> None:
        quiet, last_alarm_t, opened = state
        self._quiet = int(quiet)
        self._last_alarm_t = float(last_alarm_t)
        self.open = None if opened is None else Breach.model_validate(opened)
