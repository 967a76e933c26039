"""Deterministic synthetic telemetry: realistic event bodies for demos, tests and benchmarks.

Pure: no I/O and no wall clock. Event ``i`` carries the event time ``start + i / rate``
(aggregate over all apps, rounded to the microsecond); the caller paces delivery. The same
arguments always give byte-identical output. By concern: ``profiles`` (each app's traffic
shape), ``incidents`` (scripted anomalies), ``texts`` (prompts and answers), ``defects``
(broken inputs) and ``generator`` (the Simulator, block by block).
"""

from stream.producers.simulator.defects import DEFECTS
from stream.producers.simulator.generator import SimulatedEvent, Simulator
from stream.producers.simulator.incidents import INCIDENT_KINDS, Incident, IncidentKind
from stream.producers.simulator.profiles import (
    SCORE_NAMES,
    AppProfile,
    ModelProfile,
    ScoreProfile,
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
