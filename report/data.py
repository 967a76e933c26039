"""What the report shows, gathered through the ports: per-app series streamed page by page,
incidents merged from breach messages, evaluation results of the range."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from report.ports import BreachLog
from report.prices import PriceTable
from report.series import DEFAULT_MAX_BUCKETS, AppSeries, SeriesAccumulator, width_for
from schemas import AppDirectory, Breach, BreachState, EvaluationResult
from store.ports import EvaluationStore, TelemetryStore

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 1000
DEFAULT_MAX_RESULTS = 10_000
# Apps a report shows when none are named: each is four charts and ~0.3 MB of series while it
# is built; thousands (a service can follow that many) would make a page no one can open and,
# on the live /report, hold that much memory in the serving process.
DEFAULT_MAX_APPS = 40

__all__ = ["AppSeries", "Incident", "ReportData", "ReportRequest", "gather", "incidents"]


@dataclass(frozen=True)
class ReportRequest:
    """Which telemetry to report on: ``start`` ≤ event time < ``end``; no apps = the apps with
    telemetry in the range, the first ``max_apps`` of them by name (the rest noted)."""

    start: datetime
    end: datetime
    app_ids: tuple[str, ...] = ()
    page_size: int = DEFAULT_PAGE_SIZE
    max_buckets: int = DEFAULT_MAX_BUCKETS
    max_results: int = DEFAULT_MAX_RESULTS
    max_apps: int = DEFAULT_MAX_APPS

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("start and end must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"end {self.end} is not after start {self.start}")


@dataclass(frozen=True)
class Incident:
    """One breach from its opened message to its resolved one (``resolved_at`` None: open at
    the time the log was read, or its resolved message is no longer held)."""

    breach_id: str
    app_id: str
    kind: str
    severity: str
    source: str
    signal: str
    detector: str
    opened_at: datetime
    resolved_at: datetime | None
    observed: float
    threshold: float | None
    message: str

    @property
    def label(self) -> str:
        return f"{self.app_id} · {self.kind} · {self.signal} · {self.detector}"


_STATE_ORDER = {BreachState.OPENED: 0, BreachState.ESCALATED: 1, BreachState.RESOLVED: 2}


def incidents(breaches: Sequence[Breach], start: datetime, end: datetime) -> list[Incident]:
    """Merge each breach's opened and resolved messages; keep those open at some moment of
    ``[start, end)``; ordered by opening time."""
    merged: dict[str, Breach] = {}
    for breach in breaches:
        kept = merged.get(breach.breach_id)
        # A later message of an incident carries everything an earlier one does (an
        # escalation its new severity, the resolution its end).
        if kept is None or _STATE_ORDER[breach.state] > _STATE_ORDER[kept.state]:
            merged[breach.breach_id] = breach
    found = [
        Incident(
            breach_id=b.breach_id,
            app_id=b.app_id,
            kind=b.kind.value,
            severity=b.severity.value,
            source=b.source.value,
            signal=b.signal,
            detector=b.detector,
            opened_at=b.opened_at,
            resolved_at=b.resolved_at if b.state is BreachState.RESOLVED else None,
            observed=b.observed,
            threshold=b.threshold,
            message=b.message,
        )
        for b in merged.values()
        if b.opened_at < end and (b.resolved_at is None or b.resolved_at >= start)
    ]
    return sorted(found, key=lambda i: (i.opened_at, i.app_id, i.breach_id))


@dataclass
class ReportData:
    request: ReportRequest
    generated_at: datetime
    apps: list[AppSeries]
    incidents: list[Incident]
    evaluations: list[EvaluationResult]
    # Things the reader should know: what could not be shown and why.
    notes: list[str] = field(default_factory=list)


async def gather(
    request: ReportRequest,
    *,
    telemetry: TelemetryStore,
    evaluations: EvaluationStore,
    breaches: BreachLog | None,
    apps: AppDirectory,
    prices: Callable[[str], PriceTable | None] = lambda app_id: None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReportData:
    """Everything the report shows. Telemetry is read one page at a time and folded into
    fixed-size series, so memory does not grow with the number of documents."""
    notes: list[str] = []
    app_ids = list(request.app_ids)
    if not app_ids:
        found = await evaluations.app_ids(request.start, request.end)
        app_ids = found[: request.max_apps]
        if len(found) > request.max_apps:
            notes.append(
                f"{len(found):,} apps have telemetry in the range; the first {request.max_apps} "
                "by name are shown: name others with --app (app= on /report)"
            )
    series: list[SeriesAccumulator] = []
    # Buckets as wide as the range needs, not only the telemetry found in it: the charts span
    # the range, where buckets fitted to one event or a short burst are too narrow to see.
    min_width_s = width_for((request.end - request.start).total_seconds(), request.max_buckets)
    for app_id in app_ids:
        accumulator = SeriesAccumulator(
            app_id, apps.resolve(app_id).slo, prices(app_id), request.max_buckets, min_width_s
        )
        pages = telemetry.telemetry_window([app_id], request.start, request.end, request.page_size)
        async for page in pages:
            accumulator.add(page)
        if accumulator.buckets:
            series.append(accumulator)
        else:
            notes.append(f"{app_id}: no telemetry in the range")
    # One time axis for every app: the widest bucket any of them needed.
    width = max((s.width_s for s in series), default=1)
    for accumulator in series:
        accumulator.widen_to(width)

    found_incidents: list[Incident] = []
    if breaches is None:
        notes.append(
            "breach timeline: not available on this backend (the bus keeps no readable history)"
        )
    else:
        messages = await breaches.breaches(request.app_ids, request.end)
        found_incidents = incidents(messages, request.start, request.end)

    results = await _results(request, evaluations, notes)
    return ReportData(
        request=request,
        generated_at=now(),
        apps=[s.finish() for s in series],
        incidents=found_incidents,
        evaluations=results,
        notes=notes,
    )


async def _results(
    request: ReportRequest, store: EvaluationStore, notes: list[str]
) -> list[EvaluationResult]:
    wanted: list[str | None] = list(request.app_ids) or [None]
    kept: list[EvaluationResult] = []
    for app_id in wanted:
        found = await store.results(app_id=app_id, since=request.start, limit=request.max_results)
        if len(found) >= request.max_results:
            notes.append(
                f"evaluations{f' of {app_id}' if app_id else ''}: only the newest "
                f"{request.max_results} results are shown"
            )
        kept.extend(r for r in found if r.window.start < request.end)
    return sorted(kept, key=lambda r: (r.window.start, r.app_id, r.policy, r.metric))
