"""The one settings object of a process: environment (``EVALSTREAM_*``) over a TOML file.

Precedence, highest first: values passed by the CLI, environment variables
(``EVALSTREAM_PROCESSOR__BATCH_SIZE=1000``; nested fields joined by ``__``), the TOML config file
(``--config`` or ``EVALSTREAM_CONFIG``), then the defaults below. A wrong setting fails at start
with a message naming it. The adapters' own models (``CosmosSettings``, ``ServiceBusSettings``,
``AlertSettings``) live beside the adapters; this module composes them.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceSettingsError

from alerts.config import AlertSettings
from alerts.servicebus_config import ServiceBusSettings
from coldpath.config import ColdpathSettings
from coldpath.executors.batch_config import BatchSettings
from common.errors import Misconfigured
from evalstream.azure_monitor_config import AzureMonitorSettings
from schemas import AppDirectory
from schemas.bounds import MAX_DURATION_HOURS
from store.cosmos_config import CosmosSettings
from stream.config import ProcessorSettings
from stream.producers.ingest_config import IngestSettings
from stream.replay.config import ReplaySettings
from stream.sources.eventhubs_config import EventHubsSettings
from stream.sources.local_log import created_partitions

DEFAULT_DATA_DIR = Path("var/evalstream")
DEFAULT_PARTITIONS = 8


class SettingsError(Misconfigured):
    """The configuration is invalid; the message names every offending setting."""


class EmbeddedSettings(BaseModel):
    """The single-machine backend: SQLite files under ``data_dir``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = DEFAULT_DATA_DIR
    # Fixed when the log is created. 8 rather than 4: two workers then get even shares of a
    # few apps' events (bench.workers: 50.3 % for the busiest against 52.5 % with 4, measured
    # +2 to +4 % events/s with 2 workers), and 4 to 8 cores have a partition each.
    partitions: PositiveInt = Field(default=DEFAULT_PARTITIONS, le=1024)
    # Processing worker processes, each owning a share of the partitions (``process
    # --workers``); unset: one per core. 1 processes every partition in the command's process.
    workers: PositiveInt | None = Field(default=None, le=1024)
    # Niceness the processing workers add to their own (0-19): beside ingest workers, a
    # request then waits less for the CPU behind a batch (bench/NOTES.md, 2026-12-06 09:33–).
    workers_nice: int = Field(default=5, ge=0, le=19)
    # A processing worker whose event loop has sent no heartbeat for this long is stuck
    # (stopped, deadlocked, blocked on a hung file system): the supervisor names it in
    # readiness and kills it, so its partitions move and it is restarted. Far above the longest
    # pause of a healthy worker's loop: 3.6 s measured (its store opening, then its first
    # batches, 2 workers at 3,000 events/s with the hot path on 2 busy cores; 1.1 s at most over
    # a 123,000-event backlog with batches of 1,000 or 10,000 and the store's checkpoints).
    worker_stall_s: float = Field(default=30.0, ge=2.0, le=3600.0)
    # Events older than this are deleted from the local event log (not from the store).
    retention_hours: float = Field(default=7 * 24, gt=0, le=MAX_DURATION_HOURS, allow_inf_nan=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log.db"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def alerts_path(self) -> Path:
        return self.data_dir / "alerts.db"

    @property
    def partition_locks_path(self) -> Path:
        """Where worker processes hold one lock file per partition they process."""
        return self.data_dir / "partitions"


class AzureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    eventhubs: EventHubsSettings = Field(default_factory=EventHubsSettings)
    cosmos: CosmosSettings = Field(default_factory=CosmosSettings)
    servicebus: ServiceBusSettings = Field(default_factory=ServiceBusSettings)
    # The cold path's Batch executor and pool (`coldpath trigger --executor batch`).
    batch: BatchSettings = Field(default_factory=BatchSettings)
    # Optional export of the processor's metrics to Application Insights.
    monitor: AzureMonitorSettings = Field(default_factory=AzureMonitorSettings)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVALSTREAM_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    backend: Literal["embedded", "azure"] = "embedded"
    config: Path | None = None
    # Key of the user_id hash. Unset on the embedded backend: a random key is created once in
    # data_dir so hashes stay stable across restarts.
    user_hash_key: SecretStr | None = None
    embedded: EmbeddedSettings = Field(default_factory=EmbeddedSettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    azure: AzureSettings = Field(default_factory=AzureSettings)
    apps: AppDirectory = Field(default_factory=AppDirectory)
    coldpath: ColdpathSettings = Field(default_factory=ColdpathSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_path = _config_path(init_settings(), env_settings())
        if config_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_path))
        return tuple(sources)


def _config_path(*layers: dict[str, Any]) -> Path | None:
    for layer in layers:
        if layer.get("config"):
            return Path(layer["config"])
    return None


def load_settings(*, data_dir: Path | None = None, **overrides: Any) -> Settings:
    """Build the process's settings; raise SettingsError naming each invalid setting.
    ``data_dir`` (``--data-dir``) replaces embedded.data_dir from every other source."""
    config = overrides.get("config")
    if config is not None and not Path(config).is_file():
        raise SettingsError(f"config file {config} does not exist")
    if unknown := _unknown_variables():
        raise SettingsError("invalid settings:\n" + "\n".join(unknown))
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
    except PydanticValidationError as exc:
        lines = [
            f"  {'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        # The one file settings read; the CLI passes --config and EVALSTREAM_CONFIG as config.
        name = config or "named by EVALSTREAM_CONFIG"
        raise SettingsError(f"config file {name} is not valid TOML in UTF-8: {exc}") from exc
    except OSError as exc:
        raise SettingsError(f"config file cannot be read: {exc}") from exc
    except SourceSettingsError as exc:
        # A nested setting given as one environment variable must be JSON
        # (EVALSTREAM_PROCESSOR='{"batch_size": 500}'); pydantic-settings says which.
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise SettingsError(f"{exc}{cause}") from exc
    if data_dir is not None:
        embedded = settings.embedded.model_copy(update={"data_dir": data_dir})
        settings = settings.model_copy(update={"embedded": embedded})
    return _with_log_partitions(settings)


def _unknown_variables() -> list[str]:
    """EVALSTREAM_* variables whose first part names no setting: pydantic-settings refuses a
    misspelt nested field (EVALSTREAM_PROCESSOR__BATCH_SIZ) but skips a misspelt top-level one
    (EVALSTREAM_BACKND, EVALSTREAM_PROCESOR__BATCH_SIZE) as if it were not there."""
    prefix = str(Settings.model_config["env_prefix"])
    return [
        f"  {variable}: there is no setting {field}"
        for variable in sorted(os.environ)
        if variable.upper().startswith(prefix)
        and (field := variable[len(prefix) :].split("__")[0].lower()) not in Settings.model_fields
    ]


def _with_log_partitions(settings: Settings) -> Settings:
    """Unless embedded.partitions was set, an existing log's own count: a data dir made with an
    earlier default keeps working (a count that was set and differs is refused when the log
    opens)."""
    embedded = settings.embedded
    if "partitions" in embedded.model_fields_set:
        return settings
    created = created_partitions(embedded.log_path)
    if created is None or created == embedded.partitions:
        return settings
    return settings.model_copy(
        update={"embedded": embedded.model_copy(update={"partitions": created})}
    )
