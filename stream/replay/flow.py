"""One replay job from start to report: plan (new jobs), read, detect, report.

The pieces come from the composition root (evalstream.wiring.replay); this module only
orders them and decides when the job is complete.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import orjson

from alerts.ports import AlertPublisher
from schemas import Breach
from store.ports import ProcessorStore
from stream.exceptions import ReplayError
from stream.memory import tuned_memory
from stream.pipeline import Pipeline
from stream.ports import HotPathFactory
from stream.replay import report
from stream.replay.job import FORMAT, JobFile
from stream.replay.ports import PartitionPlan, ReplayReader
from stream.replay.run import JobStore, RateLimit, Replay
from stream.replay.shadow import detect
from stream.replay.spec import ReplaySpec


class Watcher(Protocol):
    """What the command shows while a job runs (a progress bar, or nothing)."""

    def reading(
        self,
        total: float,
        done: float,
        unit: str,
        counts: Callable[[], Counter[str]],
        processes: int = 1,
        stores: bool = True,
    ) -> None:
        """The read phase starts: ``total`` planned positions (``unit``: events, or bytes of
        files), ``done`` of them read before (a resumed job), by ``processes`` worker
        processes (1: this one); ``counts()`` gives the counts so far, stored and quarantined
        (``stores``) or valid and invalid (a shadow job: ``job.outcomes``)."""

    def events(self, count: int, advanced: float) -> None:
        """``count`` more events read, ``advanced`` more positions of the plan."""

    def detecting(self, apps: int) -> None: ...

    def app_detected(self, app: str, breaches: list[Breach]) -> None: ...


class Quiet:
    def reading(
        self,
        total: float,
        done: float,
        unit: str,
        counts: Callable[[], Counter[str]],
        processes: int = 1,
        stores: bool = True,
    ) -> None: ...

    def events(self, count: int, advanced: float) -> None: ...

    def detecting(self, apps: int) -> None: ...

    def app_detected(self, app: str, breaches: list[Breach]) -> None: ...


class Workers(Protocol):
    """Other processes that read a job's partitions (``replay --workers``)."""

    def processes(self, partitions: int) -> int:
        """How many read a job of ``partitions`` unfinished partitions."""
        ...

    async def read(
        self,
        plans: Sequence[tuple[PartitionPlan, int]],
        reading: Reading,
        totals: Counter[str],
        on_events: Callable[[int, float], None],
        stop: asyncio.Event,
    ) -> bool:
        """Read ``(plan, position)`` pairs as ``read`` does here, shared out between the
        processes; their counts added into ``totals``. True when every partition finished."""
        ...


@dataclass(frozen=True)
class Reading:
    """How a job's partitions are read: with the detectors running (``detecting``, a state per
    partition), and keeping what they read for detection after reading (``collect``)."""

    detecting: bool
    collect: bool


@dataclass
class Pieces:
    reader: ReplayReader
    # Builds the live pipeline around the replay's store, keeping the window's events; with
    # the shadow detectors, their breaches kept in the job, when they run while reading.
    pipeline: Callable[[JobStore, bool], Pipeline]
    hot_path: HotPathFactory | None
    max_future_skew: timedelta
    batch_size: int
    rate: float | None = None
    publisher: AlertPublisher | None = None
    watcher: Watcher = field(default_factory=Quiet)
    # Reads jobs of several partitions in worker processes; None: in this process.
    workers: Workers | None = None


def create(job: JobFile, spec: ReplaySpec, plans: Sequence[PartitionPlan]) -> None:
    job.create(spec.model_dump_json().encode(), plans)


def load_spec(job: JobFile) -> ReplaySpec | None:
    raw = job.get("spec")
    if raw is None:
        return None
    spec = ReplaySpec.model_validate_json(raw)
    if job.get("format") != FORMAT:
        raise ReplayError(
            f"replay job {spec.id} was made by an older evalstream (its job file is laid out "
            "otherwise); this one cannot resume it: start a new job (its events land on the "
            "same documents)"
        )
    return spec


async def run(
    job: JobFile,
    spec: ReplaySpec,
    pieces: Pieces,
    stop: asyncio.Event,
    store: ProcessorStore | None,
) -> dict[str, Any] | None:
    """Run what is left of the job (``store``: where reprocessed events go); the report when
    it completed, None when stopped."""
    watcher = pieces.watcher
    plans = job.plans()
    remaining = [(plan, position) for plan, position, finished in plans if not finished]
    # Detectors run while reading, a state per partition as live, unless the partitions are
    # several files: then their apps are detected whole after reading (stream.replay.shadow).
    # Decided from the job's plan, so a resumed job decides as it did.
    detecting = spec.mode.detects and (pieces.reader.detects_by_partition or len(plans) == 1)
    reading = Reading(detecting=detecting, collect=spec.mode.detects and not detecting)
    before = job.counts()
    totals: Counter[str] = Counter()
    workers = pieces.workers if len(remaining) > 1 else None
    watcher.reading(
        sum(plan.share(plan.size) for plan, _, _ in plans),
        sum(
            plan.share(plan.size if finished else max(0, position - plan.after))
            for plan, position, finished in plans
        ),
        pieces.reader.unit,
        lambda: before + totals,
        1 if workers is None else workers.processes(len(remaining)),
        stores=spec.mode.stores,
    )
    if remaining:
        if workers is not None:
            done = await workers.read(remaining, reading, totals, watcher.events, stop)
        else:
            done = await read(
                job, spec, pieces, remaining, reading, store, totals, watcher.events, stop
            )
        if not done:
            return None
    if reading.collect:
        assert pieces.hot_path is not None
        watcher.detecting(len(job.apps_to_detect()))
        with tuned_memory():
            if not await detect(job, pieces.hot_path, stop, watcher.app_detected):
                return None
    job.note_unreadable(pieces.reader.unreadable)
    breaches = job.breaches()
    if pieces.publisher is not None and breaches:
        await pieces.publisher.publish(breaches)
    result = report.build(spec.for_report(), job.counts(), breaches, job.unreadable())
    job.put("report", orjson.dumps(result))
    return result


async def read(
    job: JobFile,
    spec: ReplaySpec,
    pieces: Pieces,
    plans: Sequence[tuple[PartitionPlan, int]],
    reading: Reading,
    store: ProcessorStore | None,
    totals: Counter[str],
    on_events: Callable[[int, float], None],
    stop: asyncio.Event,
) -> bool:
    """Read ``(plan, position)`` pairs of the job through the pipeline in this process, this
    run's counts added into ``totals``; True when every partition reached its end."""
    job_store = JobStore(
        job, store if spec.mode.stores else None, collect=reading.collect, totals=totals
    )
    replay = Replay(
        reader=pieces.reader,
        pipeline=pieces.pipeline(job_store, reading.detecting),
        store=job_store,
        window=spec.window(),
        max_future_skew=pieces.max_future_skew,
        batch_size=pieces.batch_size,
        rate=RateLimit(pieces.rate),
        on_events=on_events,
    )
    # The processor's collector set-up: the same batches, the same allocations.
    with tuned_memory():
        return await replay.run(plans, stop)
