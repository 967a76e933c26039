"""Per-app configuration: root defaults plus overrides; an unknown app gets the defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from schemas.bounds import PositiveCount
from schemas.detection import DetectorConfig, SloConfig
from schemas.telemetry import AppId


class AppMetadata(BaseModel):
    """Who owns an app; copied onto every stored document of that app."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_code: str = "unassigned"
    owner: str = "unknown"
    tier: str = "standard"
    tags: dict[str, str] = Field(default_factory=dict)

    def as_document_fields(self) -> dict[str, str]:
        return {"project_code": self.project_code, "owner": self.owner, "tier": self.tier}


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    metadata: AppMetadata = Field(default_factory=AppMetadata)
    slo: SloConfig = Field(default_factory=SloConfig)
    detectors: DetectorConfig = Field(default_factory=DetectorConfig)


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class AppDirectory(BaseModel):
    """Resolves an app's effective configuration.

    ``overrides`` holds partial configurations (only what differs); each is merged field by
    field over ``defaults`` once, at construction, so a lookup is a dict read.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    defaults: AppConfig = Field(default_factory=AppConfig)
    # Keyed by app id: an override under any other key would never apply.
    overrides: dict[AppId, dict[str, Any]] = Field(default_factory=dict)
    # Apps whose signals one partition's hot path follows at most (each costs ~60 KB of
    # detector state): a producer that sends a new app id per request (a bug, or hostile)
    # would otherwise grow a worker's memory without bound. Events of apps beyond are stored
    # but not detected, with a warning; apps named in ``overrides`` are always followed.
    max_detected_apps: PositiveCount = 2000
    _resolved: dict[str, AppConfig] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        base = self.defaults.model_dump()
        self._resolved = {
            app_id: AppConfig.model_validate(_deep_merge(base, override))
            for app_id, override in self.overrides.items()
        }

    def resolve(self, app_id: str) -> AppConfig:
        return self._resolved.get(app_id, self.defaults)
