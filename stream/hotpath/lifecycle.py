"""Breach lifecycle: one open breach per (app, signal, detector), resolved with hysteresis."""

from __future__ import annotations

from collections import deque
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
    backwards). With ``keep_samples`` the tracker remembers the trace ids of the last offending
    values (bad requests of a burn-rate rule); otherwise a breach gets the app's most recent
    trace ids, which for a drift are the values that revealed it.
    """

    def __init__(
        self,
        app_id: str,
        signal: str,
        quiet_events: int,
        quiet_seconds: float,
        keep_samples: bool,
    ) -> None:
        self.app_id = app_id
        self.signal = signal
        self.quiet_events = quiet_events
        self.quiet_seconds = quiet_seconds
        self.keep_samples = keep_samples
        self.open: Breach | None = None
        self._quiet = 0
        self._last_alarm_t = 0.0
        self.samples: deque[str] | None = (
            deque(maxlen=MAX_SAMPLE_TRACE_IDS) if keep_samples else None
        )

    def step(
        self, detector: Detector, t: float, doc: TelemetryDocument, recent: Iterable[str]
    ) -> Breach | None:
        """Account for the detector's last update (of ``doc``); ``t`` is the watermark."""
        if self.samples is not None and detector.offending:
            self.samples.append(doc.trace_id)
        if detector.alarm:
            self._quiet = 0
            self._last_alarm_t = t
            if self.open is None:
                self.open = self._opened(detector, doc, recent)
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

    def _opened(self, detector: Detector, doc: TelemetryDocument, recent: Iterable[str]) -> Breach:
        opened_by = detector.window_id or doc.id
        samples = list(self.samples if self.samples is not None else recent)
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
            sample_trace_ids=samples[-MAX_SAMPLE_TRACE_IDS:],
            message=detector.describe(),
        )

    def state(self) -> dict[str, Any]:
        return {
            "open": None if self.open is None else self.open.model_dump(mode="json"),
            "quiet": self._quiet,
            "last_alarm_t": self._last_alarm_t,
            "samples": None if self.samples is None else list(self.samples),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        opened = state["open"]
        self.open = None if opened is None else Breach.model_validate(opened)
        self._quiet = int(state["quiet"])
        self._last_alarm_t = float(state["last_alarm_t"])
        if self.samples is not None:
            self.samples.clear()
            self.samples.extend(state["samples"] or ())
