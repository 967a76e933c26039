"""A replay job's description, fixed when the job is created and kept in its file."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from stream.replay.ports import TimeBasis, Window


class SourceKind(StrEnum):
    LOG = "log"
    EVENTHUBS = "eventhubs"
    CAPTURE = "capture"
    NDJSON = "ndjson"


class Mode(StrEnum):
    # Fresh detectors over the range; breaches to the report (published with --publish).
    SHADOW = "shadow"
    # The live path again: documents and quarantine records upserted on their ids.
    REPROCESS = "reprocess"
    BOTH = "both"

    @property
    def stores(self) -> bool:
        return self is not Mode.SHADOW

    @property
    def detects(self) -> bool:
        return self is not Mode.REPROCESS


JOB_ID = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"


def new_job_id(now: datetime) -> str:
    return f"r{now.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(2)}"


class ReplaySpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=f"^{JOB_ID}$")
    created: datetime
    source: SourceKind
    paths: list[str] = Field(default_factory=list)
    start: datetime
    end: datetime
    by: TimeBasis = TimeBasis.EVENT
    apps: list[str] = Field(default_factory=list)
    mode: Mode = Mode.SHADOW
    detectors_file: str | None = None
    # The detector settings the shadow run uses (the live ``apps`` table, or the file's),
    # frozen here so a resumed job detects with the settings it started with.
    detectors: dict[str, Any] = Field(default_factory=dict)
    consumer_group: str | None = None

    def window(self) -> Window:
        return Window(self.start, self.end, self.by, frozenset(self.apps))

    def for_report(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": {"kind": self.source.value, "paths": self.paths},
            "window": {
                "from": self.start.isoformat(),
                "to": self.end.isoformat(),
                "by": self.by.value,
                "apps": self.apps,
            },
            "mode": self.mode.value,
            "detectors_file": self.detectors_file,
        }
