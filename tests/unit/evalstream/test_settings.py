"""Settings: defaults, TOML file, environment over file, per-app inheritance, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from evalstream.settings import SettingsError, load_settings
from schemas import AppDirectory

CONFIG = """
backend = "embedded"

[embedded]
data_dir = "/tmp/evalstream-test"
partitions = 8

[processor]
batch_size = 250

[apps.defaults.metadata]
owner = "platform"

[apps.defaults.slo]
latency_threshold_ms = 1500

[apps.overrides.checkout-bot.metadata]
owner = "payments"
tier = "critical"

[apps.overrides.checkout-bot.slo]
latency_threshold_ms = 800
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "evalstream.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EVALSTREAM_CONFIG", "EVALSTREAM_PROCESSOR__BATCH_SIZE", "EVALSTREAM_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_need_no_file() -> None:
    settings = load_settings()
    assert settings.backend == "embedded"
    assert settings.processor.batch_size == 1000
    assert settings.embedded.partitions == 4


def test_file_values_are_read(config_file: Path) -> None:
    settings = load_settings(config=config_file)
    assert settings.embedded.partitions == 8
    assert settings.processor.batch_size == 250
    assert settings.embedded.store_path == Path("/tmp/evalstream-test/store.db")


def test_environment_overrides_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_PROCESSOR__BATCH_SIZE", "99")
    settings = load_settings(config=config_file)
    assert settings.processor.batch_size == 99
    assert settings.embedded.partitions == 8


def test_config_path_from_environment(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_CONFIG", str(config_file))
    assert load_settings().processor.batch_size == 250


def test_app_overrides_inherit_root_defaults(config_file: Path) -> None:
    apps = load_settings(config=config_file).apps
    checkout = apps.resolve("checkout-bot")
    assert checkout.metadata.owner == "payments"
    assert checkout.metadata.tier == "critical"
    assert checkout.metadata.project_code == "unassigned"
    assert checkout.slo.latency_threshold_ms == 800
    # Untouched fields of an overridden section come from the root defaults.
    assert checkout.slo.error_budget == apps.defaults.slo.error_budget


def test_unknown_app_gets_root_defaults(config_file: Path) -> None:
    apps = load_settings(config=config_file).apps
    unknown = apps.resolve("never-configured")
    assert unknown == apps.defaults
    assert unknown.metadata.owner == "platform"
    assert unknown.slo.latency_threshold_ms == 1500


def test_wrong_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALSTREAM_PROCESSOR__BATCH_SIZE", "-5")
    with pytest.raises(
        SettingsError, match=r"processor\.batch_size: Input should be greater than 0"
    ):
        load_settings()


def test_misspelt_setting_in_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[processor]\nbatch_sise = 10\n")
    with pytest.raises(
        SettingsError, match=r"processor\.batch_sise: Extra inputs are not permitted"
    ):
        load_settings(config=path)


def test_bad_app_override_is_named() -> None:
    with pytest.raises(ValueError, match="latency_threshold"):
        AppDirectory(overrides={"a": {"slo": {"latency_threshold": 5}}})


def test_missing_config_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(config=tmp_path / "nope.toml")
