"""TelemetryDocument: a validated, enriched event as the store keeps it."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from schemas.telemetry import MetadataValue, Status, Tokens


class IngestInfo(BaseModel):
    """Where and when the processor read the event, and how late it was."""

    model_config = ConfigDict(frozen=True)

    source: str
    partition: str
    sequence: int
    # Position of the event inside its message when a message carried several.
    index: int = 0
    offset: str | None = None
    enqueued_time: datetime
    processed_at: datetime
    lag_ms: float
    # Event time older than the lateness allowance relative to the partition's watermark:
    # stored, flagged, and kept out of event-time windows that already closed.
    late: bool = False


class DerivedSizes(BaseModel):
    model_config = ConfigDict(frozen=True)

    input_chars: int = 0
    output_chars: int = 0
    tokens_total: int = 0


class TelemetryDocument(BaseModel):
    """The stored form of a TelemetryEvent.

    ``id`` is the producer's ``event_id`` or a content hash of the canonical event, so the
    same bytes always land on the same document; ``pk`` is ``<app_id>:<YYYY-MM-DD>`` (UTC day
    of the event time). The raw ``user_id`` is never stored, only its keyed hash.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    pk: str
    type: Literal["telemetry"] = "telemetry"
    schema_version: int
    app_id: str
    timestamp: datetime
    trace_id: str
    event_id: str | None = None
    span_id: str | None = None
    model_id: str | None = None
    model_version: str | None = None
    input_text: str | None = None
    output_text: str | None = None
    latency_ms: float | None = None
    status: Status
    error_type: str | None = None
    tokens: Tokens | None = None
    scores: dict[str, float]
    user_hash: str | None = None
    metadata: dict[str, MetadataValue]
    app: dict[str, str]
    derived: DerivedSizes
    ingest: IngestInfo
    # The stored JSON, when whoever built the document serialised it already (the enricher
    # does, to serialise each event once).
    _json: bytes | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # Equal documents are equal whether or not one of them has cached its JSON.
        if isinstance(other, TelemetryDocument):
            return self.__dict__ == other.__dict__
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.pk, self.id))

    def json_bytes(self) -> bytes:
        """The document as stored: JSON, UTF-8."""
        # Through the private dict: attribute access to private fields is a slow path.
        private = self.__pydantic_private__
        cached = private.get("_json") if private is not None else None
        if cached is None:
            cached = self.model_dump_json().encode()
            self._json = cached
        return cached
