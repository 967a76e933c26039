"""The processor's settings: batching, checkpoint cadence and event-time allowances."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from schemas.bounds import PositiveSeconds, Seconds


class ProcessorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    consumer_group: str = Field(default="$Default", min_length=1)
    batch_size: PositiveInt = Field(default=1000, le=100_000)
    # How long a partition waits for a batch to fill before processing what it has.
    batch_wait_s: PositiveSeconds = 0.1
    # Detector snapshot + checkpoint cadence per partition; after a crash at most this much
    # processing is repeated (idempotently).
    checkpoint_interval_s: Seconds = 1.0
    status_interval_s: PositiveSeconds = 10.0
    # Event-time lateness allowance: older events are stored and flagged late.
    lateness_s: PositiveSeconds = 300.0
    max_future_skew_s: PositiveSeconds = 900.0
    hot_path: bool = True
    # Without ingest, /healthz, /readyz and /metrics are served on this port (with ingest, on
    # ingest's port); None: not served.
    ops_port: int | None = Field(default=None, ge=0, le=65535)
    # /readyz: a partition with events waiting and no batch or checkpoint for this long.
    ready_max_silence_s: PositiveSeconds = 60.0
