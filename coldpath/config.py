"""Settings of the cold path: the policies, how jobs are cut into shards and run locally.

Composed into ``evalstream.settings.Settings`` as ``coldpath`` (TOML ``[coldpath]``, environment
``EVALSTREAM_COLDPATH__...``). Pydantic checks each policy's shape when settings load (window
length, inverted bounds); ``check_policies`` checks what needs the metric catalogue (unknown
metrics, wrong parameters, thresholds on values the metric never reports) and raises
``PolicyConfigError`` naming the setting (``coldpath.policies[0].metrics[1].metric: ...``).
Per-app overrides of thresholds and parameters live in each policy's ``overrides``; apps
without one get the policy as written.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from coldpath.exceptions import PolicyConfigError
from coldpath.policies.base import Metric
from coldpath.policies.text.judge import JudgeModelConfig
from common.names import check_named_once
from schemas.bounds import Count, Duration, PositiveCount, PositiveSeconds, Seconds
from schemas.evaluation import EvaluationPolicy, MetricSpec, Thresholds

DEFAULT_CATALOGUE = "coldpath.policies.catalogue:CATALOGUE"
DEFAULT_GROUP_SIZE = 25
DEFAULT_SHARD_RETRIES = 3
DEFAULT_SHARD_TIMEOUT_S = 3600.0


def _thresholds(warning_max: float, critical_max: float) -> Thresholds:
    return Thresholds.model_validate(
        {"warning": {"max": warning_max}, "critical": {"max": critical_max}}
    )


QUALITY_POLICY = EvaluationPolicy(
    name="quality",
    version=1,
    window=timedelta(hours=1),
    lateness=timedelta(minutes=10),
    metrics=(
        MetricSpec(metric="latency", thresholds={"p95": _thresholds(2000.0, 5000.0)}),
        MetricSpec(metric="errors", thresholds={"rate": _thresholds(0.05, 0.2)}),
        MetricSpec(metric="usage"),
        MetricSpec(metric="scores"),
        MetricSpec(metric="drift", thresholds={"psi.latency_ms": _thresholds(0.2, 0.5)}),
    ),
    min_sample_size=50,
)

# The `make run` demo: one-minute windows, so the first results appear within minutes.
DEMO_POLICY = EvaluationPolicy(
    name="demo",
    version=1,
    window=timedelta(minutes=1),
    lateness=timedelta(seconds=15),
    metrics=(
        # Above the simulator's healthy apps (p95 up to ~2.3 s), below its 4x latency
        # regression (~5.6 s): the demo's breaches are its scripted incidents.
        MetricSpec(metric="latency", thresholds={"p95": _thresholds(3000.0, 5000.0)}),
        MetricSpec(metric="errors", thresholds={"rate": _thresholds(0.05, 0.15)}),
    ),
    min_sample_size=20,
)


class ColdpathSettings(BaseModel):
    """The cold path's part of the settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    policies: tuple[EvaluationPolicy, ...] = (QUALITY_POLICY,)
    # Where metric names resolve: ``module:attribute``, a mapping of name to Metric.
    catalogue: str = DEFAULT_CATALOGUE
    group_size: PositiveCount = DEFAULT_GROUP_SIZE
    # Local executor processes; None = every core.
    workers: PositiveCount | None = None
    # Attempts after the first for a failed shard, with backoff, before it is reported.
    shard_retries: Count = DEFAULT_SHARD_RETRIES
    shard_backoff_s: Seconds = 0.5
    # The longest one attempt of a shard may run on the local executor before it is killed and
    # counted as failed (then retried like any failure): a shard stuck on a hung file or call
    # must not hold its job forever. Batch's own limit is azure.batch.max_wall_clock_time.
    shard_timeout: PositiveSeconds = DEFAULT_SHARD_TIMEOUT_S
    page_size: PositiveInt = Field(default=1000, le=100_000)
    # Run the trigger periodically inside `evalstream process` (embedded demo). None = only
    # when the processor runs its simulator.
    schedule_in_process: bool | None = None
    schedule_interval_s: PositiveSeconds = 15.0
    # How far back the in-process schedule looks for due windows when it starts.
    schedule_catch_up: Duration = timedelta(hours=6)
    # The Azure OpenAI deployment that judges the AI-assisted text metrics (groundedness,
    # relevance, coherence, fluency). Without one they report `unavailable` with the reason.
    judge: JudgeModelConfig | None = None

    @field_validator("policies")
    @classmethod
    def _unique_names(cls, policies: tuple[EvaluationPolicy, ...]) -> tuple[EvaluationPolicy, ...]:
        check_named_once([policy.name for policy in policies], "policy")
        return policies

    @property
    def worker_count(self) -> int:
        return self.workers or os.cpu_count() or 1

    def policy(self, name: str) -> EvaluationPolicy:
        for policy in self.policies:
            if policy.name == name:
                return policy
        known = ", ".join(policy.name for policy in self.policies) or "none"
        raise PolicyConfigError(f"coldpath.policies: no policy named {name!r} (known: {known})")


def load_catalogue(reference: str) -> Mapping[str, Metric]:
    """The metric catalogue at ``module:attribute`` (a mapping, or a function returning one)."""
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
        found: Any = getattr(module, attribute or "CATALOGUE")
        catalogue = found() if callable(found) else found
    except (ImportError, AttributeError) as exc:
        raise PolicyConfigError(f"coldpath.catalogue: cannot load {reference!r}: {exc}") from exc
    except Exception as exc:  # the user's module failing in its own way: said in one line
        raise PolicyConfigError(
            f"coldpath.catalogue: {reference!r} failed as it loaded: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(catalogue, Mapping):
        raise PolicyConfigError(f"coldpath.catalogue: {reference!r} is not a mapping of metrics")
    for name, metric in sorted(catalogue.items()):
        _check_metric(reference, name, metric)
    return catalogue


# What the Metric protocol asks of every catalogue entry, read from the protocol itself so a
# method added to it is checked too (a catalogue written before ``value_names`` failed with an
# AttributeError deep in the policy check).
_METRIC_ATTRIBUTES = tuple(sorted(Metric.__annotations__))
_METRIC_METHODS = tuple(
    sorted(name for name, member in vars(Metric).items() if callable(member) and name[0] != "_")
)


def _check_metric(reference: str, name: str, metric: object) -> None:
    """Refuse a catalogue entry lacking what the Metric protocol asks, naming what is missing."""
    missing = [attr for attr in _METRIC_ATTRIBUTES if not hasattr(metric, attr)] + [
        f"{method}()" for method in _METRIC_METHODS if not callable(getattr(metric, method, None))
    ]
    if missing:
        raise PolicyConfigError(
            f"coldpath.catalogue: metric {name!r} of {reference!r} lacks "
            f"{', '.join(missing)} (see the Metric protocol in coldpath.policies.base)"
        )


def check_policies(
    policies: Sequence[EvaluationPolicy],
    catalogue: Mapping[str, Metric],
    setting: str = "coldpath.policies",
) -> None:
    """Refuse unknown metrics, wrong parameters and thresholds on values a metric never reports
    (a misspelt ``p959`` would never be judged), naming the setting; called at start.
    ``setting`` names where the policies come from (a manifest's, when a shard is given one)."""
    for index, policy in enumerate(policies):
        where = f"{setting}[{index}]"
        for position, spec in enumerate(policy.metrics):
            metric = catalogue.get(spec.metric)
            if metric is None:
                known = ", ".join(sorted(catalogue)) or "none"
                raise PolicyConfigError(
                    f"{where}.metrics[{position}].metric: unknown metric {spec.metric!r} "
                    f"(known: {known})"
                )
            _check_params(metric, spec.params, f"{where}.metrics[{position}].params")
            named = dict.fromkeys(spec.thresholds, f"{where}.metrics[{position}].thresholds")
            _check_thresholds(policy, metric, spec.params, named)
        for app_id, per_metric in policy.overrides.items():
            for name, override in per_metric.items():
                position, spec = _spec(policy, name)
                merged = {**spec.params, **override.params}
                at = f"{where}.overrides.{app_id}.{name}"
                _check_params(catalogue[name], merged, f"{at}.params")
                # The app's thresholds: its own, and the policy's under the app's parameters
                # (an override of ``types`` can leave a policy's ``rate.timeout`` nothing to judge).
                named = {
                    **dict.fromkeys(
                        spec.thresholds,
                        f"{at}.params (for the thresholds of {where}.metrics[{position}])",
                    ),
                    **dict.fromkeys(override.thresholds, f"{at}.thresholds"),
                }
                _check_thresholds(policy, catalogue[name], merged, named)


def _spec(policy: EvaluationPolicy, name: str) -> tuple[int, MetricSpec]:
    return next((at, spec) for at, spec in enumerate(policy.metrics) if spec.metric == name)


def _check_params(metric: Metric, params: Mapping[str, Any], where: str) -> None:
    try:
        metric.validate_params(params)
    except (ValueError, TypeError) as exc:
        raise PolicyConfigError(f"{where}: {exc}") from exc


def _check_thresholds(
    policy: EvaluationPolicy,
    metric: Metric,
    params: Mapping[str, Any],
    named: Mapping[str, str],
) -> None:
    """``named`` maps each thresholded value name to the setting that put it there."""
    reported = metric.value_names(params)
    for value_name in sorted(named):
        if value_name not in reported:
            raise PolicyConfigError(
                f"{named[value_name]}: policy {policy.name!r}, metric {metric.name!r} has no "
                f"value {value_name!r} to judge (its values: {reported.describe()})"
            )


def setting_path(location: tuple[int | str, ...]) -> str:
    """``("coldpath", "policies", 0, "window")`` as ``coldpath.policies[0].window``."""
    text = ""
    for part in location:
        text += f"[{part}]" if isinstance(part, int) or str(part).isdigit() else f".{part}"
    return text.lstrip(".")
