"""The one settings object of a process: environment (``EVALSTREAM_*``) over a TOML file.

Precedence, highest first: values passed by the CLI, environment variables
(``EVALSTREAM_PROCESSOR__BATCH_SIZE=1000``; nested fields joined by ``__``), the TOML config file
(``--config`` or ``EVALSTREAM_CONFIG``), then the defaults below. A wrong setting fails at start
with a message naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, SecretStr
from pydantic import ValidationError as PydanticValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from coldpath.config import ColdpathSettings
from schemas import AppDirectory
from stream.config import ProcessorSettings
from stream.producers.ingest_config import IngestSettings
from stream.sources.eventhubs_config import EventHubsSettings

DEFAULT_DATA_DIR = Path("var/evalstream")


class SettingsError(Exception):
    """The configuration is invalid; the message names every offending setting."""


class EmbeddedSettings(BaseModel):
    """The single-machine backend: SQLite files under ``data_dir``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = DEFAULT_DATA_DIR
    partitions: PositiveInt = Field(default=4, le=1024)
    # Events older than this are deleted from the local event log (not from the store).
    retention_hours: PositiveFloat = 7 * 24

    @property
    def log_path(self) -> Path:
        return self.data_dir / "log.db"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def alerts_path(self) -> Path:
        return self.data_dir / "alerts.db"


class SubscriptionSettings(BaseModel):
    """A named alert subscription; ``filter`` matches breach properties exactly."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    filter: dict[Literal["app_id", "severity", "kind", "state"], str] = Field(default_factory=dict)
    max_delivery_count: PositiveInt = 5
    lock_duration_s: PositiveFloat = 30.0


class AlertSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    subscriptions: tuple[SubscriptionSettings, ...] = (SubscriptionSettings(name="all"),)


class CosmosSettings(BaseModel):
    """Cosmos DB store. ``key``, or DefaultAzureCredential with the data-plane role
    "Cosmos DB Built-in Data Contributor"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str | None = None
    key: SecretStr | None = None
    database: str = "evalstream"
    telemetry_container: str = "telemetry"
    quarantine_container: str = "quarantine"
    state_container: str = "state"
    evaluations_container: str = "evaluations"
    create_if_missing: bool = True
    # Concurrent upserts per batch: bounded so a throttled account slows the processor down
    # instead of queueing without limit.
    max_concurrency: PositiveInt = Field(default=32, le=512)
    max_retries: int = Field(default=8, ge=0)
    # Local emulators use self-signed certificates.
    connection_verify: bool = True
    # The SDK follows the endpoints the account advertises; the Linux emulator advertises
    # 127.0.0.1, which is wrong from another container, so compose turns this off.
    enable_endpoint_discovery: bool = True


class ServiceBusSettings(BaseModel):
    """Service Bus alert topic. ``connection_string``, or ``fully_qualified_namespace`` with
    DefaultAzureCredential (roles "Azure Service Bus Data Sender" / "Data Receiver")."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: SecretStr | None = None
    fully_qualified_namespace: str | None = None
    topic: str = "breaches"


class AzureSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    eventhubs: EventHubsSettings = Field(default_factory=EventHubsSettings)
    cosmos: CosmosSettings = Field(default_factory=CosmosSettings)
    servicebus: ServiceBusSettings = Field(default_factory=ServiceBusSettings)


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


def load_settings(**overrides: Any) -> Settings:
    """Build the process's settings; raise SettingsError naming each invalid setting."""
    config = overrides.get("config")
    if config is not None and not Path(config).is_file():
        raise SettingsError(f"config file {config} does not exist")
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except PydanticValidationError as exc:
        lines = [
            f"  {'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from exc
