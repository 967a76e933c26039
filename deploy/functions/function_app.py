"""The cold path's Azure Functions entry points (Python v2 programming model).

- ``coldpath_timer``: on a schedule, plan the due windows and run them on the configured
  executor (Batch on Azure) — ``evalstream coldpath trigger`` as a function.
- ``coldpath_durable_timer`` starts ``coldpath_orchestrator`` (one instance at a time), which
  fans out one ``coldpath_evaluate_unit`` activity per (app_id, policy) of the light policies,
  hands the heavy policies' manifests to ``coldpath_submit_heavy`` (a Batch job) and fans in a
  summary. Disable whichever of the two timers you do not use
  (``AzureWebJobs.<name>.Disabled``).

Each function is a thin layer over ``evalstream.coldpath_entry`` (the trigger API composed
from settings). evalstream's settings are read per invocation from the app settings
(``EVALSTREAM_*``), never at import; the host's own ``COLDPATH_*`` settings choose the
executors and the schedules (these bound when the host indexes the functions).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Generator
from datetime import UTC, datetime
from typing import Any

import azure.durable_functions as df
import azure.functions as func

from coldpath.exceptions import ColdpathError
from evalstream.coldpath_entry import (
    ManifestReport,
    UnitReport,
    evaluate_unit,
    plan_due,
    submit_manifests,
    trigger_due,
)
from evalstream.settings import load_settings
from schemas import Unit

logger = logging.getLogger(__name__)

# The function host's own settings (not evalstream Settings, hence no EVALSTREAM_ prefix).
SCHEDULE_SETTING = "COLDPATH_SCHEDULE"
DURABLE_SCHEDULE_SETTING = "COLDPATH_DURABLE_SCHEDULE"
# inline | local | batch; unset: batch on the azure backend, inline on the embedded one.
EXECUTOR_SETTING = "COLDPATH_EXECUTOR"
HEAVY_EXECUTOR_SETTING = "COLDPATH_HEAVY_EXECUTOR"
# NCRONTAB with seconds: every five minutes.
DEFAULT_SCHEDULE = "0 */5 * * * *"

ORCHESTRATOR = "coldpath_orchestrator"
PLAN = "coldpath_plan"
EVALUATE_UNIT = "coldpath_evaluate_unit"
SUBMIT_HEAVY = "coldpath_submit_heavy"
# One orchestration at a time: a tick that finds it still running leaves it alone.
INSTANCE_ID = "evalstream-coldpath"

# Activities fail for passing reasons (store throttled, Batch busy); a unit that still fails
# after these attempts is counted in the summary and evaluated again at the next tick.
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5_000, max_number_of_attempts=3)

# The Durable decorators live on a blueprint, registered in the FunctionApp the host indexes.
bp = df.Blueprint()


def _schedule(setting: str) -> str:
    """``%SETTING%`` (the host resolves it) when the app setting exists, else the default:
    the one read of the environment at import, because the host binds schedules then."""
    return f"%{setting}%" if setting in os.environ else DEFAULT_SCHEDULE


@bp.function_name("coldpath_timer")
@bp.timer_trigger(schedule=_schedule(SCHEDULE_SETTING), arg_name="timer", use_monitor=True)
async def coldpath_timer(timer: func.TimerRequest) -> None:
    """Plan the latest due window of every policy and run it; a re-run window is a no-op."""
    if timer.past_due:
        logger.warning("cold path timer is past due: running now")
    settings = load_settings()
    reports = await trigger_due(settings, datetime.now(UTC), os.environ.get(EXECUTOR_SETTING))
    failed = [
        f"{report.manifest_id} shard {index}: {error}"
        for report in reports
        for index, error in sorted(report.failed.items())
    ]
    logger.info("cold path timer: %d manifests, %d failed shards", len(reports), len(failed))
    if failed:
        # A failed invocation is what monitoring sees; the next tick retries the window.
        raise ColdpathError("shards failed: " + "; ".join(failed))


@bp.function_name("coldpath_durable_timer")
@bp.timer_trigger(schedule=_schedule(DURABLE_SCHEDULE_SETTING), arg_name="timer", use_monitor=True)
@bp.durable_client_input(client_name="client")
async def coldpath_durable_timer(
    timer: func.TimerRequest, client: df.DurableOrchestrationClient
) -> None:
    """Start the orchestration unless the previous one is still running."""
    status = await client.get_status(INSTANCE_ID)
    running = (df.OrchestrationRuntimeStatus.Running, df.OrchestrationRuntimeStatus.Pending)
    if status is not None and status.runtime_status in running:
        logger.info("cold path orchestration still %s: not starting another", status.runtime_status)
        return
    await client.start_new(ORCHESTRATOR, INSTANCE_ID)


@bp.orchestration_trigger(context_name="context")
def coldpath_orchestrator(
    context: df.DurableOrchestrationContext,
) -> Generator[Any, Any, dict[str, Any]]:
    """Plan, fan out light units and hand heavy manifests to Batch, fan in a summary.

    Replayed from its history on every episode: no I/O and no clock here but
    ``context.current_utc_datetime`` (the same on every replay).
    """
    now = context.current_utc_datetime
    planned: list[dict[str, Any]] = yield context.call_activity_with_retry(
        PLAN, RETRY, now.isoformat()
    )
    units = [
        {"manifest_id": manifest["id"], "unit": unit}
        for manifest in planned
        if manifest["compute_class"] == "light"
        for unit in manifest["pending"]
    ]
    heavy = [
        manifest["id"]
        for manifest in planned
        if manifest["compute_class"] == "heavy" and manifest["pending"]
    ]
    tasks = [context.call_activity_with_retry(EVALUATE_UNIT, RETRY, unit) for unit in units]
    if heavy:
        tasks.append(context.call_activity_with_retry(SUBMIT_HEAVY, RETRY, heavy))
    outcomes: list[Any] = []
    if tasks:
        # task_all schedules every task at once but stops at the first failure; waiting on
        # each task after it (done ones return at once) counts every failure, not the first.
        with contextlib.suppress(Exception):
            yield context.task_all(tasks)
        for task in tasks:
            try:
                outcomes.append((yield task))
            except Exception as exc:
                outcomes.append(exc)
    return summary(now, planned, units, heavy, outcomes)


def summary(
    now: datetime,
    planned: list[dict[str, Any]],
    units: list[dict[str, Any]],
    heavy: list[str],
    outcomes: list[Any],
) -> dict[str, Any]:
    """The orchestration's output: what was evaluated, breached, failed and handed on."""
    reports = [UnitReport.model_validate(o) for o in outcomes[: len(units)] if isinstance(o, dict)]
    failures = [
        {**unit["unit"], "manifest_id": unit["manifest_id"], "error": str(outcome).strip()}
        for unit, outcome in zip(units, outcomes, strict=False)
        if isinstance(outcome, Exception)
    ]
    heavy_outcome = outcomes[len(units)] if heavy else None
    return {
        "at": now.isoformat(),
        "windows": sorted({manifest["window"]["start"] for manifest in planned}),
        "units": len(units),
        "evaluated": sum(not report.skipped for report in reports),
        "skipped": sum(report.skipped for report in reports),
        "results": sum(report.results for report in reports),
        "breaches": sum(report.breaches for report in reports),
        "failures": failures,
        "heavy_manifests": heavy,
        "heavy_reports": heavy_outcome if isinstance(heavy_outcome, list) else [],
        "heavy_error": str(heavy_outcome).strip() if isinstance(heavy_outcome, Exception) else None,
    }


@bp.activity_trigger(input_name="now")
async def coldpath_plan(now: str) -> list[dict[str, Any]]:
    """Stage the due windows' manifests (light and heavy apart); return their pending units."""
    planned = await plan_due(load_settings(), datetime.fromisoformat(now))
    return [manifest.model_dump(mode="json") for manifest in planned]


@bp.activity_trigger(input_name="payload")
async def coldpath_evaluate_unit(payload: dict[str, Any]) -> dict[str, Any]:
    """Evaluate one (app_id, policy) of a staged manifest; a done unit is skipped."""
    unit = Unit.model_validate(payload["unit"])
    report = await evaluate_unit(load_settings(), payload["manifest_id"], unit)
    return report.model_dump(mode="json")


@bp.activity_trigger(input_name="manifest_ids")
async def coldpath_submit_heavy(manifest_ids: list[str]) -> list[dict[str, Any]]:
    """Hand the heavy policies' manifests to the heavy executor (a Batch job each on Azure)."""
    reports: list[ManifestReport] = await submit_manifests(
        load_settings(), manifest_ids, os.environ.get(HEAVY_EXECUTOR_SETTING)
    )
    return [report.model_dump(mode="json") for report in reports]


app = func.FunctionApp()
app.register_functions(bp)
