"""Builds the adapters a command needs from the settings; the only module that knows them all."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from evalstream.settings import Settings
from store.sqlite import SqliteStore
from stream.decode import DecodeLimits, Decoder
from stream.enrich import Enricher
from stream.local_log import SOURCE_NAME, LocalLogSink, LocalLogSource
from stream.pipeline import BreachPublisher, HotPathFactory, Pipeline
from stream.stats import ProcessorStats

USER_HASH_KEY_FILE = "user-hash.key"


def user_hash_key(settings: Settings) -> bytes:
    """The configured key, else one created once in the data dir (so hashes stay stable)."""
    if settings.user_hash_key is not None:
        return settings.user_hash_key.get_secret_value().encode()
    path = settings.embedded.data_dir / USER_HASH_KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def decoder(settings: Settings) -> Decoder:
    return Decoder(
        DecodeLimits(
            max_body_bytes=settings.ingest.max_request_bytes,
            max_events_per_body=settings.ingest.max_events_per_request,
            max_future_skew=timedelta(seconds=settings.processor.max_future_skew_s),
        )
    )


def enricher(settings: Settings, source: str = SOURCE_NAME) -> Enricher:
    return Enricher(settings.apps, user_hash_key(settings), source)


def store(settings: Settings) -> SqliteStore:
    _require_embedded(settings)
    return SqliteStore(settings.embedded.store_path)


def sink(settings: Settings) -> LocalLogSink:
    _require_embedded(settings)
    return LocalLogSink(settings.embedded.log_path, settings.embedded.partitions)


def source(settings: Settings) -> LocalLogSource:
    _require_embedded(settings)
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
    from stream.hotpath import HotPath

    apps = settings.apps

    def build(blob: bytes | None) -> HotPath:
        return HotPath.restore(apps, blob) if blob else HotPath(apps)

    return build


@asynccontextmanager
async def publisher(settings: Settings) -> AsyncIterator[BreachPublisher | None]:
    if not settings.processor.hot_path:
        yield None
        return
    from evalstream.cli_alerts import open_publisher

    async with open_publisher(settings) as bus:
        yield bus


def pipeline(
    settings: Settings,
    store_: SqliteStore,
    stats: ProcessorStats,
    publisher_: BreachPublisher | None,
) -> Pipeline:
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


def _require_embedded(settings: Settings) -> None:
    if settings.backend != "embedded":
        from evalstream.settings import SettingsError

        raise SettingsError(
            f"backend {settings.backend!r} is not available in this build yet: "
            'use backend = "embedded"'
        )


def data_dir(settings: Settings) -> Path:
    return settings.embedded.data_dir
