"""Builds the adapters a command needs from the settings; the only module that knows them all."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

from evalstream import logs
from evalstream.settings import Settings, SettingsError
from evalstream.wiring.data_dir import usable_data_dir
from evalstream.wiring.key_file import key_file
from store.sqlite import KeyUpgrade, SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.privacy import Pseudonymizer
from stream.sources.local_log import SOURCE_NAME, LocalLogSink, LocalLogSource

# Only what every command needs is imported above: a command that does not build the
# processor or HTTP ingest (status, send, a cold-path shard task...) does not pay for them.
if TYPE_CHECKING:
    from rich.console import Console
    from starlette.routing import BaseRoute

    from alerts.config import SubscriptionSpec
    from alerts.ports import AlertPublisher, AlertReceiver
    from coldpath.executors.batch import BatchExecutor
    from coldpath.policies.base import Metric
    from coldpath.ports import Executor
    from coldpath.runner import ShardRunner
    from evalstream.workers import WorkerPool
    from schemas import EvaluationPolicy, JobManifest
    from store.ports import EvaluationStore, TelemetryStore
    from stream.metrics import IngestMetrics
    from stream.pipeline import Pipeline
    from stream.ports import EventSink, EventSource, HotPathFactory
    from stream.processor import Processor
    from stream.producers.ingest import IngestApp
    from stream.producers.ingest_rates import Buckets
    from stream.sources.eventhubs_consumer import PartitionPosition
    from stream.stats import ProcessorStats

USER_HASH_KEY_FILE = "user-hash.key"

logger = logging.getLogger(__name__)


def user_hash_key(settings: Settings) -> bytes:
    """The configured key (refused when empty); on the embedded backend, else the key file of
    the data dir, created once (``key_file``: whole or absent, never replaced, refused when it
    holds no usable key)."""
    if settings.user_hash_key is not None:
        key = settings.user_hash_key.get_secret_value()
        if not key:
            raise SettingsError(
                "user_hash_key: empty; set EVALSTREAM_USER_HASH_KEY to a long random secret"
                + (" or leave it unset" if settings.backend == "embedded" else "")
            )
        return key.encode()
    if settings.backend != "embedded":
        raise SettingsError(
            "user_hash_key: required on the azure backend (every processor instance must hash "
            "user ids with the same key); set EVALSTREAM_USER_HASH_KEY"
        )
    path = usable_data_dir(settings.embedded.data_dir) / USER_HASH_KEY_FILE
    return key_file(path)


def decoder(settings: Settings) -> Decoder:
    return Decoder(
        DecodeLimits(
            max_body_bytes=settings.ingest.max_request_bytes,
            max_events_per_body=settings.ingest.max_events_per_request,
            max_future_skew=timedelta(seconds=settings.processor.max_future_skew_s),
        )
    )


def enricher(settings: Settings, source: str | None = None) -> Enricher:
    return Enricher(settings.apps, user_hash_key(settings), source or _source_name(settings))


def _source_name(settings: Settings) -> str:
    return SOURCE_NAME if settings.backend == "embedded" else "eventhubs"


def store(settings: Settings, *, read_only: bool = False) -> TelemetryStore:
    """The telemetry store of the configured backend (an async context manager).
    ``read_only`` (commands that only read): the embedded store, existing, opened so that
    nothing in the data dir changes (no write check, no schema, no -wal or -shm left)."""
    if settings.backend == "azure":
        from store.cosmos import cosmos_store

        return cosmos_store(settings.azure.cosmos)
    if read_only:
        return SqliteStore(settings.embedded.store_path, read_only=True)
    usable_data_dir(settings.embedded.data_dir)
    return SqliteStore(settings.embedded.store_path)


def sink(settings: Settings) -> EventSink:
    """Where producers (send, simulate, ingest) append events."""
    if settings.backend == "azure":
        from stream.sources.eventhubs_producer import eventhubs_sink

        return eventhubs_sink(settings.azure.eventhubs)
    usable_data_dir(settings.embedded.data_dir)
    # The log is evalstream's own file: no raw user_id is written to it.
    pseudonymizer = Pseudonymizer(decoder(settings), enricher(settings))
    return LocalLogSink(
        settings.embedded.log_path,
        settings.embedded.partitions,
        pseudonymizer,
        functools.partial(covered_positions, settings),
    )


def ingest_app(
    settings: Settings,
    sink: EventSink,
    store_: TelemetryStore,
    metrics: IngestMetrics,
    extra_routes: Sequence[BaseRoute],
    buckets: Buckets | None = None,
) -> IngestApp:
    """HTTP ingest as configured, in the processor's process or in a worker process of its own
    (``buckets``: the rate buckets the workers share)."""
    from stream.producers.admission import Admission
    from stream.producers.ingest import IngestApp
    from stream.producers.ingest_auth import Authorizer

    admission = None
    limit = settings.ingest.max_backlog
    if limit is not None and isinstance(sink, LocalLogSink):
        group = settings.processor.consumer_group
        admission = Admission(
            functools.partial(sink.backlog, group), limit, hold_s=settings.ingest.backlog_hold_s
        )
    return IngestApp(
        decoder(settings),
        enricher(settings, "ingest"),
        sink,
        store_,
        body_timeout_s=settings.ingest.body_timeout_s,
        authorizer=Authorizer(settings.ingest.auth, buckets=buckets),
        metrics=metrics,
        extra_routes=extra_routes,
        admission=admission,
    )


async def covered_positions(settings: Settings) -> dict[int, int]:
    """Per partition of the embedded log, the last sequence the store holds: what its snapshot
    covers (the processor's consumer group), or a document or record written after it (none
    before the store exists)."""
    path = settings.embedded.store_path
    if not path.exists():
        return {}
    covered = {}
    async with SqliteStore(path) as store:
        written = await store.written_sequences(SOURCE_NAME)
        for partition in range(settings.embedded.partitions):
            snapshot = await store.load_state(settings.processor.consumer_group, str(partition))
            last = max(
                snapshot.covered_sequence if snapshot is not None else -1,
                written.get(str(partition), -1),
            )
            if last >= 0:
                covered[partition] = last
    return covered


async def covered_sequences(settings: Settings, partitions: list[str]) -> dict[str, int]:
    """Of these partitions, the last sequence the store's snapshot covers (the processor's
    consumer group), for those that have one: where Event Hubs partitions without a
    checkpoint resume. Opens the store itself, so the source can run in a child process."""
    covered = {}
    async with store(settings) as store_:
        for partition in partitions:
            snapshot = await store_.load_state(settings.processor.consumer_group, partition)
            if snapshot is not None:
                covered[partition] = snapshot.covered_sequence
    return covered


def source(settings: Settings) -> EventSource:
    if settings.backend == "azure":
        from stream.sources.eventhubs_consumer import eventhubs_source

        covered = functools.partial(covered_sequences, settings)
        if not settings.azure.eventhubs.receive_in_child_process:
            return eventhubs_source(settings.azure.eventhubs, settings.processor, covered)
        from stream.sources.subprocess_source import SubprocessSource

        # The child logs like this process (its stderr is ours).
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        return SubprocessSource(
            functools.partial(
                eventhubs_source, settings.azure.eventhubs, settings.processor, covered
            ),
            setup=functools.partial(logs.configure, level, logs.chosen_format()),
        )
    usable_data_dir(settings.embedded.data_dir)
    return LocalLogSource(
        settings.embedded.log_path,
        settings.embedded.partitions,
        settings.processor.consumer_group,
        settings.processor.batch_size,
        settings.processor.batch_wait_s,
        settings.embedded.retention_hours * 3600,
    )


def hot_path(settings: Settings) -> HotPathFactory | None:
    if not settings.processor.hot_path:
        return None
    from stream.hotpath import HotPath, SnapshotError

    apps = settings.apps

    def build(blob: bytes | None) -> HotPath:
        if not blob:
            return HotPath(apps)
        try:
            return HotPath.restore(apps, blob)
        except SnapshotError:
            # A snapshot from an incompatible version (or damaged) must not stop the
            # processor: detectors start over and warm up again, which is logged loudly.
            logger.exception("detector snapshot unusable; starting the hot path afresh")
            return HotPath(apps)

    return build


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[AlertPublisher | None]:
    if not settings.processor.hot_path:
        yield None
        return
    async with alert_publisher(settings) as bus:
        yield bus


def pipeline(
    settings: Settings,
    store_: TelemetryStore,
    stats: ProcessorStats,
    publisher_: AlertPublisher | None,
) -> Pipeline:
    from stream.pipeline import Pipeline

    return Pipeline(
        store=store_,
        decoder=decoder(settings),
        enricher=enricher(settings),
        consumer_group=settings.processor.consumer_group,
        lateness=timedelta(seconds=settings.processor.lateness_s),
        checkpoint_interval_s=settings.processor.checkpoint_interval_s,
        stats=stats,
        hot_path=hot_path(settings) if publisher_ is not None else None,
        publisher=publisher_,
    )


def worker_count(settings: Settings, requested: int | None = None) -> int:
    """Processing worker processes: ``requested`` (``--workers``), else the setting, else one
    per core; never more than the partitions. The Azure backend processes in this process
    (more instances, not workers, share an event hub's partitions)."""
    wanted = requested or settings.embedded.workers
    if settings.backend != "embedded":
        if wanted is not None and wanted > 1:
            raise SettingsError(
                "--workers: the azure backend runs one worker per process; start more "
                "processor instances to share the event hub's partitions"
            )
        return 1
    return max(1, min(wanted or os.cpu_count() or 1, settings.embedded.partitions))


def processor(
    settings: Settings,
    store_: TelemetryStore,
    stats: ProcessorStats,
    publisher_: AlertPublisher | None,
    on_status: Callable[[str], None],
    workers: int = 1,
) -> Processor | WorkerPool:
    """The processor: in this process, or (``workers`` > 1) a supervisor of worker processes
    each running its own pipeline (``store_`` and ``publisher_`` are then not used)."""
    if workers > 1:
        from evalstream.workers import WorkerPool

        return WorkerPool(settings, stats, workers, on_status)
    from stream.processor import Processor

    return Processor(
        source(settings),
        pipeline(settings, store_, stats, publisher_),
        stats,
        settings.processor.status_interval_s,
        on_status,
    )


def evaluation_store(settings: Settings, *, read_only: bool = False) -> EvaluationStore:
    """The cold path's store of results, progress and manifests (an async context manager);
    ``read_only`` as for ``store``."""
    if settings.backend == "azure":
        from store.cosmos_evaluations import cosmos_evaluation_store

        return cosmos_evaluation_store(settings.azure.cosmos)
    from store.sqlite_evaluations import SqliteEvaluationStore

    if read_only:
        return SqliteEvaluationStore(settings.embedded.store_path, read_only=True)
    usable_data_dir(settings.embedded.data_dir)
    return SqliteEvaluationStore(settings.embedded.store_path)


def alert_publisher(settings: Settings) -> AlertPublisher:
    """The alert publisher of the configured backend (not yet entered)."""
    if settings.backend == "embedded":
        from alerts.sqlite_bus import SqliteAlertPublisher

        usable_data_dir(settings.embedded.data_dir)
        return SqliteAlertPublisher(settings.embedded.alerts_path, settings.alerts.subscriptions)
    # Subscriptions are provisioned with the topic on Azure, not passed to the publisher; the
    # SDK is imported only here, so the embedded backend never loads it.
    from alerts.servicebus_publisher import servicebus_publisher

    return servicebus_publisher(settings.azure.servicebus)


def alert_receiver(
    settings: Settings, spec: SubscriptionSpec, *, read_only: bool = False
) -> AlertReceiver:
    """The receiver for one subscription on the configured backend (not yet entered);
    ``read_only`` as for ``store`` (only its dead letters are read)."""
    if settings.backend == "embedded":
        from alerts.sqlite_bus import SqliteAlertReceiver

        if read_only:
            return SqliteAlertReceiver(settings.embedded.alerts_path, spec, read_only=True)
        usable_data_dir(settings.embedded.data_dir)
        return SqliteAlertReceiver(settings.embedded.alerts_path, spec)
    from alerts.servicebus_receiver import servicebus_receiver

    return servicebus_receiver(settings.azure.servicebus, spec)


def metric_catalogue(settings: Settings) -> Mapping[str, Metric]:
    """The metric catalogue, each of its metrics checked against the Metric protocol and every
    configured policy against it (raises ``PolicyConfigError`` naming the setting). Settings
    load without this check (a shard task's settings may name a catalogue only its node has):
    it is made here, when the cold path's parts are built, by every command that reads the
    policies."""
    from coldpath.config import check_policies, load_catalogue

    catalogue = load_catalogue(settings.coldpath.catalogue)
    if settings.coldpath.judge is not None:
        from coldpath.policies.text import with_judge

        catalogue = with_judge(catalogue, settings.coldpath.judge)
    check_policies(settings.coldpath.policies, catalogue)
    return catalogue


def policies(settings: Settings) -> tuple[EvaluationPolicy, ...]:
    """The configured policies, once the metric catalogue accepts them (``metric_catalogue``):
    how code that reads the policies without having built the catalogue (the report's prices,
    the deploy entry points' planning) gets them, so a refused policy is never planned or
    priced. The ``coldpath`` commands and the in-process schedule check at their start."""
    metric_catalogue(settings)
    return settings.coldpath.policies


def shard_command(settings: Settings) -> Callable[[str, int], list[str]]:
    """The command line of one shard task: this program's ``coldpath run-shard``."""
    prefix = [sys.executable, "-m", "evalstream", "coldpath", "run-shard"]
    if settings.config is not None:
        prefix += ["--config", str(settings.config)]
    prefix += ["--data-dir", str(settings.embedded.data_dir)]

    def command(manifest_id: str, group_index: int) -> list[str]:
        return [*prefix, "--manifest", manifest_id, "--group-index", str(group_index)]

    return command


def executor(
    settings: Settings, name: str, console: Console | None = None, *, follow: bool = True
) -> Executor:
    """The cold-path executor named ``name``: ``local`` (a process per shard here) or ``batch``
    (a Batch job per manifest; ``follow`` waits for it and reports failed shards)."""
    if name == "batch":
        return batch_executor(settings, follow=follow)
    if name != "local":
        raise SettingsError(f"--executor: {name!r} is not available (known: local, batch)")
    from coldpath.executors.local import LocalExecutor
    from common.retry import Backoff

    cold = settings.coldpath
    backoff = Backoff(
        initial_s=cold.shard_backoff_s,
        max_s=max(cold.shard_backoff_s, 10.0),
        max_retries=cold.shard_retries,
    )
    return LocalExecutor(
        shard_command(settings),
        workers=cold.worker_count,
        backoff=backoff,
        timeout_s=cold.shard_timeout,
        console=console,
    )


def batch_executor(settings: Settings, *, follow: bool = True) -> BatchExecutor:
    """The Azure Batch executor, staging manifests in the configured Blob container."""
    from coldpath.executors.batch import BatchExecutor
    from coldpath.executors.blob_staging import BlobStaging

    batch = settings.azure.batch
    if not batch.account_url:
        raise SettingsError("azure.batch.account_url: required by --executor batch")

    async def stage(manifest: JobManifest) -> str:
        async with BlobStaging(batch.staging) as staging:
            return await staging.stage(manifest)

    return BatchExecutor(batch, stage=stage, follow=follow)


async def put_staged_text(settings: Settings, name: str, text: str) -> None:
    """Write a text file (a shard's results) to the Batch staging container."""
    from coldpath.executors.blob_staging import BlobStaging

    async with BlobStaging(settings.azure.batch.staging) as staging:
        await staging.put_text(name, text)


def code_version() -> str:
    """This program's version, frozen into each manifest (results say what computed them)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("evalstream")
    except PackageNotFoundError:
        return "0+unknown"


def log_positions(settings: Settings) -> list[tuple[int, int, int]]:
    """Per partition of the embedded log: (partition, last sequence, checkpoint)."""
    from stream.sources.local_log import LocalLog

    log = LocalLog(settings.embedded.log_path, settings.embedded.partitions, read_only=True)
    try:
        group = settings.processor.consumer_group
        return [
            (partition, log.last_sequence(partition), log.checkpoint(group, partition))
            for partition in range(settings.embedded.partitions)
        ]
    finally:
        log.close()


async def hub_positions(
    settings: Settings, *, checkpoints: bool = True, retries: bool = True
) -> list[PartitionPosition]:
    """Per partition of the event hub: its last sequence and the processor's checkpoint.
    Without ``retries`` the service is asked once (the SDK retries even a missing hub)."""
    from stream.sources.eventhubs_consumer import partition_positions

    return await partition_positions(
        settings.azure.eventhubs,
        settings.processor.consumer_group,
        checkpoints=checkpoints,
        client_options=None if retries else {"retry_total": 0},
    )


def upgrade_store_key(settings: Settings) -> KeyUpgrade | None:
    """The embedded store given the time-led telemetry key (store.sqlite.upgrade_key), under the
    processor's lock of the data dir: a ``SourceError`` names the processor running on it."""
    from store.sqlite import upgrade_key
    from stream.sources.local_log import PROCESSOR_LOCK, ProcessorLock

    with ProcessorLock(settings.embedded.data_dir / PROCESSOR_LOCK):
        return upgrade_key(settings.embedded.store_path)


@asynccontextmanager
async def shard_runner(
    settings: Settings, evaluations: EvaluationStore | None = None
) -> AsyncIterator[ShardRunner]:
    """The cold path's shard runner over the configured telemetry store, evaluation store
    (``evaluations`` when the caller has it open already) and alert publisher."""
    from coldpath.runner import ShardRunner

    catalogue = metric_catalogue(settings)
    async with AsyncExitStack() as stack:
        telemetry = await stack.enter_async_context(store(settings))
        if evaluations is None:
            evaluations = await stack.enter_async_context(evaluation_store(settings))
        publisher = await stack.enter_async_context(alert_publisher(settings))
        yield ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=publisher,
            catalogue=catalogue,
            apps=settings.apps,
            page_size=settings.coldpath.page_size,
        )
