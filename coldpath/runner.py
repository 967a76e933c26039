"""The shard task: evaluate every unit of one shard of a manifest, exactly once in effect.

A manifest's policies are checked against the catalogue before its first unit runs (a
manifest file or one staged by other settings may name values no metric reports). For each
unit, in order: skip it when progress says done for this manifest; read the
reference window (when a metric needs it) and the window, page by page, into one accumulator
per metric; judge each outcome against the thresholds; publish the evaluation breaches; upsert
the results; mark the unit done. Killed at any instant and run again, the same results (same
ids) are upserted and the same breaches (same message ids) published, which the store and the
bus both absorb: nothing is lost and nothing is doubled.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from alerts.ports import AlertPublisher
from coldpath.config import check_policies
from coldpath.exceptions import ColdpathError
from coldpath.policies.base import Accumulator, Metric, MetricOutcome
from coldpath.windows import reference_window
from schemas import (
    AppDirectory,
    Breach,
    BreachKind,
    BreachSource,
    BreachState,
    EvaluationPolicy,
    EvaluationResult,
    JobManifest,
    MetricSpec,
    Severity,
    ShardProgress,
    Unit,
    Window,
)
from schemas.breach import breach_id_for
from schemas.evaluation import EvaluationStatus, evaluation_pk, evaluation_result_id
from store.ports import EvaluationStore, TelemetryStore

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000


@dataclass(frozen=True)
class UnitOutcome:
    """What one unit produced (for logs and tests)."""

    unit: Unit
    results: tuple[EvaluationResult, ...]
    breaches: tuple[Breach, ...]
    skipped: bool = False


def sample_status(outcome: MetricOutcome, min_sample_size: int) -> tuple[EvaluationStatus, str]:
    """The status of an outcome before thresholds: too few samples or an unavailable metric
    are final (they never breach); anything else is ``ok`` until a bound is crossed."""
    if outcome.status == "unavailable":
        return "unavailable", outcome.reason or "metric unavailable"
    if outcome.status == "insufficient_data" or outcome.sample_size < min_sample_size:
        reason = outcome.reason or (
            f"{outcome.sample_size} samples, fewer than the minimum {min_sample_size}"
        )
        return "insufficient_data", reason
    return "ok", outcome.reason


def judged_status(
    breaches: Sequence[Breach], unjudged: Sequence[str], reason: str
) -> tuple[EvaluationStatus, str]:
    """The status of an outcome after its thresholds: a crossed bound is ``critical`` or
    ``warning``; otherwise a thresholded value the window left undefined (a score that did not
    occur, too few values for a drift statistic) is ``insufficient_data`` naming it, never a
    plain ``ok`` that would claim the threshold held. Both are reported in the reason."""
    parts = [breach.message for breach in breaches]
    if unjudged:
        names = ", ".join(unjudged)
        parts.append(f"not judged, no value in this window: threshold on {names}")
    if breaches:
        critical = any(breach.severity is Severity.CRITICAL for breach in breaches)
        return ("critical" if critical else "warning"), "; ".join(parts)
    if unjudged:
        return "insufficient_data", "; ".join(parts)
    return "ok", reason


# Documents hold any finite double: sums and means of them may overflow. numpy's warning about it
# is not a fault of the metric: the infinite or NaN value is what ``finite_value`` handles.
def _overflow_is_a_value() -> np.errstate:
    return np.errstate(over="ignore", invalid="ignore")


def finite_value(value: float | None) -> float | None:
    """A metric's value as it is stored and judged: beyond a double (a mean of latencies near
    the largest double overflows) the largest double with its sign, NaN (sums of both signs)
    undefined. JSON has neither: stored, they read back as null, and a breach built on one
    could not be read back at all."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return None
    return math.copysign(sys.float_info.max, value)


def evaluation_breach(
    unit: Unit,
    spec: MetricSpec,
    value_name: str,
    value: float,
    window: Window,
    severity_bound: tuple[Severity, float],
) -> Breach:
    """The breach of one value over one window; its id depends only on what it is about."""
    severity, bound = severity_bound
    signal = f"{unit.policy}:{spec.metric}"
    return Breach(
        breach_id=breach_id_for(unit.app_id, signal, value_name, window.key),
        state=BreachState.OPENED,
        severity=severity,
        kind=BreachKind.EVALUATION,
        source=BreachSource.COLD,
        app_id=unit.app_id,
        signal=signal,
        detector=value_name,
        observed=value,
        threshold=bound,
        window_start=window.start,
        window_end=window.end,
        # Event time, not processing time: a re-run publishes a byte-identical breach.
        opened_at=window.end,
        message=(
            f"{unit.app_id} {signal} {value_name}={value:.6g} crossed the {severity.value} "
            f"bound {bound:g} over {window.key}"
        ),
    )


class ShardRunner:
    """Runs units of staged manifests against a store, a catalogue and an alert publisher.

    ``clock`` gives ``computed_at`` and ``done_at`` only: nothing that decides a value, a
    status or an id reads it.
    """

    def __init__(
        self,
        *,
        telemetry: TelemetryStore,
        evaluations: EvaluationStore,
        publisher: AlertPublisher,
        catalogue: Mapping[str, Metric],
        apps: AppDirectory,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.evaluations = evaluations
        self.publisher = publisher
        self.catalogue = catalogue
        self.apps = apps
        self.page_size = page_size
        self.clock = clock or (lambda: datetime.now(UTC))
        self._checked: set[str] = set()

    async def run_shard(self, manifest: JobManifest, group_index: int) -> list[UnitOutcome]:
        """Evaluate shard ``group_index`` of ``manifest``; units already done are skipped."""
        done = await self.evaluations.done_units(manifest.id)
        outcomes = []
        for unit in manifest.shard(group_index):
            if unit.key in done:
                outcomes.append(UnitOutcome(unit, (), (), skipped=True))
                continue
            outcome = await self.run_unit(manifest, unit)
            await self.evaluations.mark_done(
                ShardProgress(
                    manifest_id=manifest.id,
                    unit=unit,
                    group_index=group_index,
                    done_at=self.clock(),
                )
            )
            # After the progress mark: a task killed from here on skips this unit when retried.
            logger.info(
                "unit %s/%s done",
                unit.app_id,
                unit.policy,
                extra={"manifest_id": manifest.id, "group_index": group_index},
            )
            outcomes.append(outcome)
        return outcomes

    async def run_unit(self, manifest: JobManifest, unit: Unit) -> UnitOutcome:
        """Evaluate one unit, publish its breaches, upsert its results (progress is the
        caller's: it must come after both)."""
        self._check(manifest)
        policy = manifest.policy(unit.policy)
        specs = policy.metrics_for(unit.app_id)
        app = self.apps.resolve(unit.app_id)
        metrics = [self._metric(spec) for spec in specs]
        accumulators = [
            metric.accumulator(spec.params, app)
            for metric, spec in zip(metrics, specs, strict=True)
        ]
        window = manifest.window
        referencing = [
            accumulator
            for metric, accumulator in zip(metrics, accumulators, strict=True)
            if metric.needs_reference
        ]
        if referencing:
            await self._feed(unit.app_id, reference_window(policy, window), referencing, True)
        await self._feed(unit.app_id, window, accumulators, False)

        results: list[EvaluationResult] = []
        breaches: list[Breach] = []
        computed_at = self.clock()
        for metric, spec, accumulator in zip(metrics, specs, accumulators, strict=True):
            outcome = _finish(accumulator, metric)
            result, found = self._result(manifest, unit, policy, metric, spec, outcome, computed_at)
            results.append(result)
            breaches.extend(found)
        if breaches:
            await self.publisher.publish(breaches)
        await self.evaluations.upsert_results(results)
        logger.info(
            "evaluated %s/%s over %s: %d results, %d breaches",
            unit.app_id,
            unit.policy,
            window.key,
            len(results),
            len(breaches),
            extra={"app_id": unit.app_id, "policy": unit.policy, "manifest_id": manifest.id},
        )
        return UnitOutcome(unit, tuple(results), tuple(breaches))

    def _check(self, manifest: JobManifest) -> None:
        """Refuse (``PolicyConfigError``) a manifest whose policies this catalogue cannot
        evaluate as written, before any result of it is stored."""
        if manifest.id not in self._checked:
            check_policies(manifest.policies, self.catalogue, f"manifest {manifest.id} policies")
            self._checked.add(manifest.id)

    def _metric(self, spec: MetricSpec) -> Metric:
        metric = self.catalogue.get(spec.metric)
        if metric is None:
            raise ColdpathError(f"metric {spec.metric!r} is not in the catalogue")
        return metric

    async def _feed(
        self, app_id: str, window: Window, accumulators: Sequence[Accumulator], reference: bool
    ) -> None:
        pages = self.telemetry.telemetry_window([app_id], window.start, window.end, self.page_size)
        async for page in pages:
            with _overflow_is_a_value():
                for accumulator in accumulators:
                    if reference:
                        accumulator.add_reference(page)
                    else:
                        accumulator.add(page)

    def _result(
        self,
        manifest: JobManifest,
        unit: Unit,
        policy: EvaluationPolicy,
        metric: Metric,
        spec: MetricSpec,
        outcome: MetricOutcome,
        computed_at: datetime,
    ) -> tuple[EvaluationResult, list[Breach]]:
        window = manifest.window
        status, reason = sample_status(outcome, policy.min_sample_size)
        values = {name: finite_value(value) for name, value in outcome.values.items()}
        breaches: list[Breach] = []
        if status == "ok":
            unjudged: list[str] = []
            for value_name, thresholds in sorted(spec.thresholds.items()):
                value = values.get(value_name)
                if value is None:
                    unjudged.append(value_name)
                    continue
                verdict = thresholds.judge(value)
                if verdict is not None:
                    breaches.append(
                        evaluation_breach(unit, spec, value_name, value, window, verdict)
                    )
            status, reason = judged_status(breaches, unjudged, reason)
        result = EvaluationResult(
            id=evaluation_result_id(
                unit.app_id, policy.name, policy.version, window, metric.name, metric.version
            ),
            pk=evaluation_pk(unit.app_id, window),
            app_id=unit.app_id,
            policy=policy.name,
            policy_version=policy.version,
            metric=metric.name,
            metric_version=metric.version,
            window=window,
            values=values,
            sample_size=outcome.sample_size,
            status=status,
            reason=reason,
            thresholds=dict(spec.thresholds),
            details=dict(outcome.details),
            manifest_id=manifest.id,
            run=manifest.run,
            computed_at=computed_at,
        )
        return result, breaches


def _finish(accumulator: Accumulator, metric: Metric) -> MetricOutcome:
    """A metric that fails while finishing gives an unavailable result, not a failed shard."""
    try:
        with _overflow_is_a_value():
            return accumulator.finish()
    except Exception as exc:  # a metric bug must not hide the other metrics' results
        logger.exception("metric %s failed", metric.name)
        return MetricOutcome(values={}, sample_size=0, status="unavailable", reason=repr(exc))
