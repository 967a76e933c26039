"""Contracts of the cold path: evaluation policies, their results, job manifests and progress.

A policy says which metrics to compute over which UTC-aligned windows and where their values
must stay; a result is one metric's value for one (app, policy, window); a manifest freezes
everything a shard task needs at trigger time. Ids are content hashes, so running the same
window again lands on the same result and the same job. No I/O here.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.bounds import MAX_COUNT, Count, Finite
from schemas.breach import Severity
from schemas.telemetry import APP_ID_PATTERN, AppId, is_app_id

DAY = timedelta(days=1)
# The longest window or lateness: a century, so that the latest due window (now - lateness -
# window) and its reference stay in the calendar.
MAX_LENGTH = timedelta(days=36_500)
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

EvaluationStatus = Literal["ok", "warning", "critical", "insufficient_data", "unavailable"]
ComputeClass = Literal["light", "heavy"]


def content_hash(*parts: object) -> str:
    """A stable 32-hex-digit hash of JSON-serialisable parts (dict keys sorted)."""
    material = orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(material, digest_size=16).hexdigest()


def check_window_length(window: timedelta) -> timedelta:
    """A window length must tile the UTC day: divide it exactly or be whole days."""
    seconds = window.total_seconds()
    if seconds <= 0 or seconds != int(seconds):
        raise ValueError(f"window must be a positive whole number of seconds, got {window}")
    whole = int(seconds)
    day = int(DAY.total_seconds())
    if whole < day and day % whole:
        raise ValueError(f"window {window} does not divide a day into equal windows")
    if whole > day and whole % day:
        raise ValueError(f"window {window} longer than a day must be a whole number of days")
    if window > MAX_LENGTH:
        raise ValueError(f"window {window} must be at most {MAX_LENGTH.days} days")
    return window


class Bound(BaseModel):
    """Where a value must stay: ``min`` ≤ value ≤ ``max`` (either side optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: Finite | None = None
    max: Finite | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"inverted bound: min {self.min} > max {self.max}")
        return self

    def crossed(self, value: float) -> float | None:
        """The bound that ``value`` crosses, or None when it stays inside."""
        if self.min is not None and value < self.min:
            return self.min
        if self.max is not None and value > self.max:
            return self.max
        return None


class Thresholds(BaseModel):
    """Warning and critical bounds of one value; critical must lie outside warning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    warning: Bound | None = None
    critical: Bound | None = None

    @model_validator(mode="after")
    def _nested(self) -> Thresholds:
        warning, critical = self.warning, self.critical
        if warning is None or critical is None:
            return self
        if warning.max is not None and critical.max is not None and critical.max < warning.max:
            raise ValueError(
                f"inverted bounds: critical.max {critical.max} < warning.max {warning.max}"
            )
        if warning.min is not None and critical.min is not None and critical.min > warning.min:
            raise ValueError(
                f"inverted bounds: critical.min {critical.min} > warning.min {warning.min}"
            )
        return self

    def judge(self, value: float | None) -> tuple[Severity, float] | None:
        """The severity and the bound ``value`` crosses (critical first), or None."""
        if value is None:
            return None
        for severity, bound in (
            (Severity.CRITICAL, self.critical),
            (Severity.WARNING, self.warning),
        ):
            if bound is not None and (crossed := bound.crossed(value)) is not None:
                return severity, crossed
        return None


class MetricSpec(BaseModel):
    """One metric of a policy: its catalogue name, its parameters, and thresholds keyed by the
    name of the value they apply to (``{"p95": {"warning": {"max": 1500}}}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = Field(pattern=NAME_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)


class MetricOverride(BaseModel):
    """What one app changes of one metric: parameters merged key by key, thresholds replaced
    per value name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    params: dict[str, Any] = Field(default_factory=dict)
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)


class EvaluationPolicy(BaseModel):
    """What to evaluate, how often, and where the values must stay.

    Windows are UTC-aligned ``[start, start + window)``; one is due once ``end + lateness`` has
    passed. ``overrides`` maps an app id to per-metric overrides; other apps get the policy as
    written. Change ``version`` whenever results for the same documents would change.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(default=1, ge=1, le=MAX_COUNT)
    window: timedelta = timedelta(hours=1)
    lateness: timedelta = timedelta(minutes=5)
    # When the scheduler triggers it; "@window" = each window as soon as it is due.
    schedule: str = "@window"
    metrics: tuple[MetricSpec, ...] = Field(min_length=1)
    min_sample_size: Count = 20
    apps: Literal["all"] | tuple[str, ...] = "all"
    compute_class: ComputeClass = "light"
    reference: Literal["previous"] = "previous"
    overrides: dict[AppId, dict[str, MetricOverride]] = Field(default_factory=dict)

    @field_validator("window")
    @classmethod
    def _window(cls, value: timedelta) -> timedelta:
        return check_window_length(value)

    @field_validator("apps")
    @classmethod
    def _apps(cls, value: Literal["all"] | tuple[str, ...]) -> Literal["all"] | tuple[str, ...]:
        # Checked here, not by the type: a union's error would name its "all" branch.
        for index, app_id in enumerate(() if value == "all" else value):
            if not is_app_id(app_id):
                raise ValueError(f"item {index}, {app_id!r}, is not an app id ({APP_ID_PATTERN})")
        return value

    @field_validator("lateness")
    @classmethod
    def _lateness(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"lateness must not be negative, got {value}")
        if value > MAX_LENGTH:
            raise ValueError(f"lateness {value} must be at most {MAX_LENGTH.days} days")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> EvaluationPolicy:
        names = [spec.metric for spec in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError(
                f"metrics listed twice: {sorted({n for n in names if names.count(n) > 1})}"
            )
        for app_id, per_metric in self.overrides.items():
            unknown = set(per_metric) - set(names)
            if unknown:
                raise ValueError(
                    f"overrides.{app_id}: metrics {sorted(unknown)} are not in this policy"
                )
        return self

    def applies_to(self, app_id: str) -> bool:
        return self.apps == "all" or app_id in self.apps

    def metrics_for(self, app_id: str) -> tuple[MetricSpec, ...]:
        """The metric specs with ``app_id``'s overrides applied."""
        per_metric = self.overrides.get(app_id)
        if not per_metric:
            return self.metrics
        resolved = []
        for spec in self.metrics:
            override = per_metric.get(spec.metric)
            if override is None:
                resolved.append(spec)
                continue
            resolved.append(
                spec.model_copy(
                    update={
                        "params": {**spec.params, **override.params},
                        "thresholds": {**spec.thresholds, **override.thresholds},
                    }
                )
            )
        return tuple(resolved)


class Window(BaseModel):
    """A UTC-aligned event-time window ``[start, end)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _valid(self) -> Window:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} is not after start {self.start}")
        return self

    @property
    def key(self) -> str:
        """The identity of the window in ids: ``START/END`` in UTC ISO-8601."""
        return f"{_iso(self.start)}/{_iso(self.end)}"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def evaluation_result_id(
    app_id: str,
    policy: str,
    policy_version: int,
    window: Window,
    metric: str,
    metric_version: int,
) -> str:
    """Deterministic result id: re-evaluating the same window never makes a second result."""
    return content_hash(app_id, policy, policy_version, window.key, metric, metric_version)


def evaluation_pk(app_id: str, window: Window) -> str:
    """Partition key of a result: the app and the UTC day of the window start."""
    return f"{app_id}:{window.start.astimezone(UTC).date().isoformat()}"


class EvaluationResult(BaseModel):
    """One metric of one policy for one (app, window), with its status against thresholds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    pk: str
    type: Literal["evaluation"] = "evaluation"
    app_id: str
    policy: str
    policy_version: int
    metric: str
    metric_version: int
    window: Window
    values: dict[str, float | None]
    sample_size: int = Field(ge=0)
    status: EvaluationStatus
    reason: str = ""
    thresholds: dict[str, Thresholds] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    manifest_id: str
    run: int = 0
    computed_at: datetime


class Unit(BaseModel):
    """One (app, policy) pair of a job: the unit of work and of progress."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    app_id: str = Field(pattern=APP_ID_PATTERN)
    policy: str

    @property
    def key(self) -> str:
        return f"{self.app_id}\x1f{self.policy}"

    def sort_key(self) -> tuple[str, str]:
        return (self.policy, self.app_id)


class JobManifest(BaseModel):
    """Everything a shard task needs, frozen at trigger time.

    ``units`` is sorted and never changes, so apps that appear while a job runs never shift
    shards. ``id`` is a hash of all other fields: the same inputs give the same id, so
    re-triggering a window finds the same job; a deliberate re-run carries a new ``run``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = ""
    window: Window
    policies: tuple[EvaluationPolicy, ...]
    units: tuple[Unit, ...]
    group_size: int = Field(ge=1)
    code_version: str
    run: int = Field(default=0, ge=0)
    created_at: datetime | None = None

    @model_validator(mode="after")
    def _identity(self) -> JobManifest:
        if list(self.units) != sorted(self.units, key=Unit.sort_key):
            raise ValueError("manifest units must be sorted by (policy, app_id)")
        names = {policy.name for policy in self.policies}
        missing = {unit.policy for unit in self.units} - names
        if missing:
            raise ValueError(f"units refer to policies not in the manifest: {sorted(missing)}")
        expected = self.compute_id()
        if self.id and self.id != expected:
            raise ValueError(f"manifest id {self.id} does not match its content ({expected})")
        if not self.id:
            object.__setattr__(self, "id", expected)
        return self

    def compute_id(self) -> str:
        content = self.model_dump(mode="json", exclude={"id", "created_at"})
        return content_hash(content)

    @property
    def shard_count(self) -> int:
        return -(-len(self.units) // self.group_size)

    def shard(self, group_index: int) -> tuple[Unit, ...]:
        """Units ``[i·g, (i+1)·g)`` of shard ``i``."""
        if not 0 <= group_index < max(self.shard_count, 1):
            raise ValueError(f"group index {group_index} outside 0..{self.shard_count - 1}")
        size = self.group_size
        return self.units[group_index * size : (group_index + 1) * size]

    def policy(self, name: str) -> EvaluationPolicy:
        for policy in self.policies:
            if policy.name == name:
                return policy
        raise KeyError(name)


class ShardProgress(BaseModel):
    """A unit of a manifest is done: its results and breaches were durable before this."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_id: str
    unit: Unit
    group_index: int = Field(ge=0)
    done_at: datetime
