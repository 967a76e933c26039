"""Settings of the HTTP ingest endpoint: where it listens and how much one request may carry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import PositiveCount, PositiveSeconds, Seconds
from stream.producers.ingest_auth import IngestAuthSettings


class IngestSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    max_request_bytes: PositiveCount = 1024 * 1024
    max_events_per_request: PositiveCount = 500
    # A client gets this long from its first header byte to its last, and from the end of its
    # headers to the end of its body: a slow or stalled client cannot hold a connection longer.
    # header_timeout_s is also how long an answer may wait for a client that reads none of it.
    header_timeout_s: PositiveSeconds = 10.0
    body_timeout_s: PositiveSeconds = 30.0
    # Processes serving ingest beside the processor's (0: in the processor's own process, on
    # its event loop; unset: half the cores, at least one). `process --ingest-workers` wins.
    workers: int | None = Field(default=None, ge=0, le=64)
    # Embedded backend: past this many events waiting for the processor in the log, posts are
    # paced to the processor's rate, and from twice as many they wait for the backlog to fall
    # (stream.producers.admission), so that a load the processor cannot follow backs off
    # instead of growing the log without end. None (not expressible in TOML; for programs):
    # accept whatever the backlog.
    max_backlog: PositiveCount | None = 100_000
    # How long a post may wait for its turn; then it is answered 503 with Retry-After (its events
    # are not kept; the producer sends them again). 0: no pacing, 503 at once past max_backlog.
    backlog_hold_s: Seconds = 2.0
    auth: IngestAuthSettings = Field(default_factory=IngestAuthSettings)
