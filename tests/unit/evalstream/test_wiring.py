"""Wiring: adapters chosen by settings; a damaged detector snapshot does not stop processing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from evalstream import wiring
from evalstream.settings import SettingsError, load_settings
from evalstream.workers import WorkerPool
from store.sqlite import SqliteStore
from stream.hotpath import HotPath
from stream.processor import Processor
from stream.sources.local_log import LocalLogSink, LocalLogSource
from stream.stats import ProcessorStats


def test_embedded_backend_builds_sqlite_adapters(tmp_path: Path) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path})
    assert isinstance(wiring.store(settings), SqliteStore)
    assert isinstance(wiring.sink(settings), LocalLogSink)
    assert isinstance(wiring.source(settings), LocalLogSource)


def test_user_hash_key_is_created_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path})
    first = wiring.user_hash_key(settings)
    assert len(first) == 64
    assert wiring.user_hash_key(settings) == first
    assert (tmp_path / "user-hash.key").stat().st_mode & 0o777 == 0o600


def test_azure_backend_requires_a_shared_user_hash_key() -> None:
    settings = load_settings(backend="azure")
    with pytest.raises(SettingsError, match="user_hash_key"):
        wiring.user_hash_key(settings)


def test_damaged_snapshot_starts_the_hot_path_afresh(caplog: pytest.LogCaptureFixture) -> None:
    build = wiring.hot_path(load_settings())
    assert build is not None
    with caplog.at_level(logging.ERROR):
        restored = build(b'{"version": 999}')
    assert isinstance(restored, HotPath)
    assert restored.snapshot() == HotPath(load_settings().apps).snapshot()
    assert "snapshot unusable" in caplog.text


def test_hot_path_off_builds_nothing() -> None:
    assert wiring.hot_path(load_settings(processor={"hot_path": False})) is None


def test_worker_count_one_per_core_capped_by_partitions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    settings = load_settings(embedded={"data_dir": tmp_path, "partitions": 4})
    assert wiring.worker_count(settings) == 4
    assert wiring.worker_count(settings, 3) == 3
    assert wiring.worker_count(load_settings(embedded={"data_dir": tmp_path, "workers": 2})) == 2
    one = load_settings(embedded={"data_dir": tmp_path, "workers": 1})
    assert isinstance(
        wiring.processor(one, SqliteStore(tmp_path / "s.db"), ProcessorStats(), None, print, 1),
        Processor,
    )
    assert isinstance(
        wiring.processor(
            settings, SqliteStore(tmp_path / "s.db"), ProcessorStats(), None, print, 2
        ),
        WorkerPool,
    )


def test_workers_on_the_azure_backend_are_refused_with_the_way_to_scale() -> None:
    settings = load_settings(backend="azure")
    assert wiring.worker_count(settings) == 1
    with pytest.raises(SettingsError, match="more processor instances"):
        wiring.worker_count(settings, 2)
