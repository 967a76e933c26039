"""QuarantineRecord: input that could not become a TelemetryEvent, kept with every reason."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

# Raw bytes beyond this are truncated in quarantine (the record says so and keeps the size).
MAX_QUARANTINE_RAW_BYTES = 64 * 1024


class ValidationIssue(BaseModel):
    """One reason an input was rejected: a stable code, where, and a human message."""

    model_config = ConfigDict(frozen=True)

    code: str
    location: str
    message: str


class QuarantineRecord(BaseModel):
    """An input that was not stored as telemetry.

    ``id`` is deterministic (hash of the source position, or of the raw bytes for inputs that
    never reached a source) so a replayed batch quarantines onto the same records.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    pk: str
    type: Literal["quarantine"] = "quarantine"
    raw: str
    raw_encoding: Literal["utf-8", "base64"]
    raw_size: int
    truncated: bool
    issues: list[ValidationIssue]
    source: str
    partition: str | None = None
    sequence: int | None = None
    offset: str | None = None
    app_id: str | None = None
    received_at: datetime

    @property
    def reason(self) -> str:
        return "; ".join(f"{issue.location}: {issue.message}" for issue in self.issues)
