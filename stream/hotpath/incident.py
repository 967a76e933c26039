"""Incidents: one open breach per (app, signal), whichever detectors found the problem.

Each detector keeps its own ``BreachTracker`` (when it fired, its hysteresis); an ``Incident``
turns their opened/resolved breaches into what subscribers receive: the first detector that
fires opens the incident (its breach, with the same deterministic id as a lone breach would
have), the others add their evidence to it, a more severe one escalates it, and it resolves
once every detector's tracker is quiet again. A regression that ADWIN, the KS test and the
latency SLO all see is one incident with three pieces of evidence and at most three
messages (opened, escalated, resolved), not three breaches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from schemas.breach import (
    SEVERITY_RANK,
    Breach,
    BreachKind,
    BreachSource,
    BreachState,
    Evidence,
    Severity,
)
from stream.hotpath.factory import message_format
from stream.hotpath.lifecycle import BreachTracker
from stream.hotpath.packing import (
    from_micros,
    micros,
    pack_floats,
    pack_ids,
    unpack_floats,
    unpack_ids,
)


def evidence_of(breach: Breach) -> Evidence:
    """What a detector's own breach says, as evidence of an incident."""
    return Evidence(
        detector=breach.detector,
        kind=breach.kind,
        severity=breach.severity,
        observed=breach.observed,
        baseline=breach.baseline,
        threshold=breach.threshold,
        at=breach.opened_at,
        message=breach.message,
    )


class Incident:
    """The incident of one (app, signal), fed with its detectors' breaches.

    ``absorb`` takes a breach that a tracker of ``trackers`` just opened or resolved and
    returns the message for subscribers, if any: the incident opened, escalated (a detector of
    a higher severity joined; the incident takes its severity, kind, figures and samples) or
    resolved (no tracker open any more). Evidence from a detector of the same or a lower
    severity changes the incident silently; the next message carries it. The state is the
    open incident, exact, only while one is open: compact (no keys, ids and numbers as
    bytes, times as µs, messages as their detectors' message arguments or as references to
    the evidence they repeat), checked once per change by decoding it, else its full JSON.
    """

    __slots__ = ("_args", "_packed", "open", "trackers")

    def __init__(self, trackers: Sequence[BreachTracker]) -> None:
        self.trackers = trackers
        self.open: Breach | None = None
        # (open incident, its JSON): encoded once per change, not per snapshot.
        self._packed: tuple[Breach, Any] | None = None
        # What each evidence row's message was made of (the detector's message arguments,
        # when it has them): the snapshot keeps these instead of the text.
        self._args: dict[str, list[Any]] = {}

    def absorb(self, breach: Breach) -> Breach | None:
        incident = self.open
        if breach.state is BreachState.OPENED:
            opener = next((t for t in self.trackers if t.open is breach), None)
            args = opener.open_args if opener is not None else None
            if incident is None:
                self._args = {} if args is None else {breach.detector: args}
                self.open = breach.model_copy(update={"evidence": [evidence_of(breach)]})
                return self.open
            if args is not None and breach.detector not in self._args:
                self._args[breach.detector] = args
            return self._join(incident, breach)
        if incident is None:
            # Cannot happen with a consistent snapshot (a tracker is only open inside an
            # incident); a resolution is published rather than lost.
            return breach
        if any(tracker.open is not None for tracker in self.trackers):
            return None
        self.open = None
        self._args = {}
        quiet = ", ".join(incident.detectors)
        return incident.model_copy(
            update={
                "state": BreachState.RESOLVED,
                "resolved_at": breach.resolved_at,
                "window_end": breach.window_end,
                "message": f"{incident.message}; resolved: {quiet} quiet",
            }
        )

    def _join(self, incident: Breach, breach: Breach) -> Breach | None:
        known = {e.detector for e in incident.evidence}
        evidence = incident.evidence
        if breach.detector not in known:
            evidence = [*evidence, evidence_of(breach)]
        if SEVERITY_RANK[breach.severity] <= SEVERITY_RANK[incident.severity]:
            if evidence is not incident.evidence:
                self.open = incident.model_copy(update={"evidence": evidence})
            return None
        self.open = incident.model_copy(
            update={
                "state": BreachState.ESCALATED,
                "severity": breach.severity,
                "kind": breach.kind,
                "observed": breach.observed,
                "baseline": breach.baseline,
                "threshold": breach.threshold,
                "window_end": breach.opened_at,
                "sample_trace_ids": breach.sample_trace_ids,
                "message": escalated(breach.message, incident.detector, incident.message),
                "evidence": evidence,
            }
        )
        return self.open

    def state(self) -> Any:
        if self.open is None:
            return None
        if self._packed is None or self._packed[0] is not self.open:
            self._packed = (self.open, self._pack(self.open))
        return self._packed[1]

    def load_state(self, state: Any) -> None:
        self._args = {}
        if state is None:
            self.open = None
        elif isinstance(state, dict):
            self.open = Breach.model_validate(state)
        else:
            self.open = self._unpack(state)

    # -- compact form --------------------------------------------------------------------------
    # [ids (incident id, samples), numbers (observed, baseline, threshold, window start and
    #  end, opened at), [state, severity, kind, detector], message (i: row i's; [i]: row i's
    #  escalating the opener's; else the text), evidence rows [detector, kind, severity,
    #  numbers (observed, baseline, threshold, at), message arguments or text]];
    # app and signal are the trackers', the source is the hot path, None is NaN.
    def _pack(self, incident: Breach) -> Any:
        full = incident.model_dump(mode="json")
        packed = [
            pack_ids([incident.breach_id, *incident.sample_trace_ids]),
            pack_floats(
                [
                    incident.observed,
                    _nan(incident.baseline),
                    _nan(incident.threshold),
                    micros(incident.window_start),
                    micros(incident.window_end),
                    micros(incident.opened_at),
                ]
            ),
            [incident.state.value, incident.severity.value, incident.kind.value, incident.detector],
            self._pack_message(incident),
            [
                [
                    e.detector,
                    e.kind.value,
                    e.severity.value,
                    pack_floats([e.observed, _nan(e.baseline), _nan(e.threshold), micros(e.at)]),
                    self._pack_evidence_message(e),
                ]
                for e in incident.evidence
            ],
        ]
        try:
            same = self._unpack(orjson.loads(orjson.dumps(packed))).model_dump(mode="json")
        except (TypeError, ValueError, IndexError):
            same = None
        return packed if same == full else full

    def _pack_evidence_message(self, e: Evidence) -> Any:
        """The row's message arguments when they give its text back, else the text."""
        args = self._args.get(e.detector)
        formatter = message_format(e.detector)
        if args is not None and formatter is not None and formatter(args) == e.message:
            return args
        return e.message

    @staticmethod
    def _pack_message(incident: Breach) -> Any:
        """The incident's message as a reference to its evidence when it is made of it: ``i``
        for row i's message (opened), ``[i]`` for row i's escalating the opener's, else the
        text."""
        rows = incident.evidence
        for i, row in enumerate(rows):
            if incident.message == row.message:
                return i
            if rows and incident.message == escalated(
                row.message, incident.detector, rows[0].message
            ):
                return [i]
        return incident.message

    def _unpack(self, packed: list[Any]) -> Breach:
        ids, numbers, (state, severity, kind, detector), message, rows = packed
        breach_id, *samples = unpack_ids(ids)
        observed, baseline, threshold, start_us, end_us, opened_us = unpack_floats(numbers)
        evidence = []
        for name, e_kind, e_severity, e_numbers, e_message in rows:
            e_observed, e_baseline, e_threshold, at_us = unpack_floats(e_numbers)
            if isinstance(e_message, list):
                formatter = message_format(name)
                if formatter is None:
                    raise ValueError(f"no message format for detector {name!r}")
                self._args[name] = e_message
                e_message = formatter(e_message)
            evidence.append(
                Evidence(
                    detector=name,
                    kind=BreachKind(e_kind),
                    severity=Severity(e_severity),
                    observed=e_observed,
                    baseline=_none(e_baseline),
                    threshold=_none(e_threshold),
                    at=from_micros(at_us),
                    message=e_message,
                )
            )
        if isinstance(message, int):
            message = evidence[message].message
        elif isinstance(message, list):
            message = escalated(evidence[message[0]].message, detector, evidence[0].message)
        tracker = self.trackers[0]
        return Breach(
            breach_id=breach_id,
            state=BreachState(state),
            severity=Severity(severity),
            kind=BreachKind(kind),
            source=BreachSource.HOT,
            app_id=tracker.app_id,
            signal=tracker.signal,
            detector=detector,
            observed=observed,
            baseline=_none(baseline),
            threshold=_none(threshold),
            window_start=from_micros(start_us),
            window_end=from_micros(end_us),
            opened_at=from_micros(opened_us),
            sample_trace_ids=samples,
            message=message,
            evidence=evidence,
        )


def escalated(message: str, opener: str, opened: str) -> str:
    """An escalation's message: the escalating detector's, then the opener's."""
    return f"{message} (escalated; opened by {opener}: {opened})"


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _none(value: float) -> float | None:
    return None if math.isnan(value) else value
