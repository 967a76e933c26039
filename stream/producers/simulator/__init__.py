"""Deterministic synthetic telemetry: realistic event bodies for demos, tests and benchmarks.

Pure: no I/O and no wall clock. Event ``i`` carries the event time ``start + i / rate``
(aggregate over all apps, rounded to the microsecond); the caller paces delivery. The same
arguments always give byte-identical output.
"""

from stream.producers.simulator.generator import (
    DEFECTS,
    INCIDENT_KINDS,
    SCORE_NAMES,
    AppProfile,
    Incident,
    IncidentKind,
    ModelProfile,
    ScoreProfile,
    SimulatedEvent,
    Simulator,
)

__all__ = [
    "DEFECTS",
    "INCIDENT_KINDS",
    "SCORE_NAMES",
    "AppProfile",
    "Incident",
    "IncidentKind",
    "ModelProfile",
    "ScoreProfile",
    "SimulatedEvent",
    "Simulator",
]
