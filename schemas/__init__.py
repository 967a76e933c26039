"""Contracts that cross evalstream's ports: pydantic v2 models, no I/O."""

from schemas.appconfig import AppConfig, AppDirectory, AppMetadata
from schemas.breach import Breach, BreachKind, BreachSource, BreachState, Evidence, Severity
from schemas.detection import DetectorConfig, SloConfig
from schemas.document import DerivedSizes, IngestInfo, TelemetryDocument
from schemas.evaluation import (
    Bound,
    EvaluationPolicy,
    EvaluationResult,
    JobManifest,
    MetricOverride,
    MetricSpec,
    ShardProgress,
    Thresholds,
    Unit,
    Window,
)
from schemas.quarantine import QuarantineRecord, ValidationIssue
from schemas.telemetry import SourcePosition, Status, TelemetryEvent, Tokens

__all__ = [
    "AppConfig",
    "AppDirectory",
    "AppMetadata",
    "Bound",
    "Breach",
    "BreachKind",
    "BreachSource",
    "BreachState",
    "DerivedSizes",
    "DetectorConfig",
    "EvaluationPolicy",
    "EvaluationResult",
    "Evidence",
    "IngestInfo",
    "JobManifest",
    "MetricOverride",
    "MetricSpec",
    "QuarantineRecord",
    "Severity",
    "ShardProgress",
    "SloConfig",
    "SourcePosition",
    "Status",
    "TelemetryDocument",
    "TelemetryEvent",
    "Thresholds",
    "Tokens",
    "Unit",
    "ValidationIssue",
    "Window",
]
