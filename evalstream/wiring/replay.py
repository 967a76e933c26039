"""The pieces of a replay job, picked from the settings and the job's description."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from alerts.ports import AlertPublisher
from evalstream import wiring
from evalstream.settings import Settings
from evalstream.wiring.data_dir import usable_data_dir
from schemas import AppDirectory
from stream.exceptions import ReplayError, ReplayMisconfigured
from stream.pipeline import Pipeline
from stream.ports import HotPathFactory, HotPathState
from stream.replay.flow import Pieces, Quiet, Watcher, Workers
from stream.replay.ports import ReplayReader
from stream.replay.run import JobAlerts, JobStore, RangeSelection
from stream.replay.spec import ReplaySpec, SourceKind
from stream.stats import ProcessorStats


def jobs_dir(settings: Settings) -> Path:
    return usable_data_dir(settings.embedded.data_dir) / "replays"


def job_path(settings: Settings, job_id: str) -> Path:
    """The job's file; its lock file is beside it (``.lock``)."""
    return jobs_dir(settings) / f"{job_id}.db"


def reader(settings: Settings, spec: ReplaySpec, workers: int = 1) -> ReplayReader:
    """The job's source. ``workers``: the processes a new job is planned for; a reprocess
    job cuts big NDJSON files in parts for them (detection reads each file whole)."""
    if spec.source is SourceKind.NDJSON:
        from stream.replay.readers.ndjson import NdjsonReader

        parts = 1 if spec.mode.detects else workers
        return NdjsonReader([Path(path) for path in spec.paths], spec.created, parts)
    if spec.source is SourceKind.LOG:
        from stream.replay.readers.local_log import LogReader

        return LogReader(settings.embedded.log_path, settings.embedded.partitions)
    if spec.source is SourceKind.EVENTHUBS:
        from stream.replay.readers.eventhubs import EventHubsReader

        group = spec.consumer_group or settings.replay.consumer_group
        if group == settings.processor.consumer_group:
            raise ReplayMisconfigured(
                f"--consumer-group: {group!r} is the live processor's; a replay reads through "
                "its own (replay.consumer_group)"
            )
        skew = timedelta(seconds=settings.processor.max_future_skew_s)
        return EventHubsReader(settings.azure.eventhubs, group, spec.window().enqueued_from(skew))
    from stream.replay.readers.capture_blob import CaptureReader

    window = spec.window()
    skew = timedelta(seconds=settings.processor.max_future_skew_s)
    return CaptureReader(
        settings.replay.capture, window.enqueued_from(skew), window.enqueued_before()
    )


def shadow_hot_path(spec: ReplaySpec) -> HotPathFactory:
    """Fresh detectors with the job's settings, or the ones a checkpoint of this job saved."""
    from stream.hotpath import HotPath, SnapshotError

    apps = AppDirectory.model_validate(spec.detectors)

    def build(blob: bytes | None) -> HotPathState:
        if not blob:
            return HotPath(apps)
        try:
            return HotPath.restore(apps, blob)
        except SnapshotError as exc:
            raise ReplayError(
                f"replay job {spec.id}: its detectors' snapshot cannot be restored ({exc}); "
                "start a new job"
            ) from exc

    return build


def worker_count(settings: Settings, requested: int | None = None) -> int:
    """Worker processes that share a job's partitions: ``requested`` (``--workers``), else
    the setting, else one per core."""
    return requested or settings.replay.workers or os.cpu_count() or 1


def pieces(
    settings: Settings,
    spec: ReplaySpec,
    *,
    rate: float | None,
    publisher: AlertPublisher | None,
    watcher: Watcher | None = None,
    workers: int = 1,
    keep_fds: Sequence[int] = (),
) -> Pieces:
    """The job's pieces; with ``workers`` > 1, a job of several partitions is read by that
    many worker processes (at most one per partition), each holding ``keep_fds`` open."""
    source = reader(settings, spec)
    selection = RangeSelection(spec.window(), enqueued_times=source.enqueued_times)
    decoder = wiring.decoder(settings)
    enricher = wiring.enricher(settings, source.source)

    detectors = shadow_hot_path(spec) if spec.mode.detects else None

    def pipeline(store: JobStore, detecting: bool) -> Pipeline:
        return Pipeline(
            store=store,
            decoder=decoder,
            enricher=enricher,
            consumer_group=f"replay:{spec.id}",
            lateness=timedelta(seconds=settings.processor.lateness_s),
            checkpoint_interval_s=settings.processor.checkpoint_interval_s,
            stats=ProcessorStats(),
            selection=selection,
            hot_path=detectors if detecting else None,
            publisher=JobAlerts(store) if detecting else None,
        )

    return Pieces(
        reader=source,
        pipeline=pipeline,
        hot_path=detectors,
        max_future_skew=timedelta(seconds=settings.processor.max_future_skew_s),
        batch_size=settings.replay.batch_size,
        rate=rate,
        publisher=publisher,
        watcher=watcher or Quiet(),
        workers=pool(settings, spec, workers, rate, keep_fds) if workers > 1 else None,
    )


def pool(
    settings: Settings, spec: ReplaySpec, workers: int, rate: float | None, keep_fds: Sequence[int]
) -> Workers:
    from evalstream.replay_pool import ReplayWorkers

    return ReplayWorkers(settings, spec, job_path(settings, spec.id), workers, rate, keep_fds)
