"""The replay's settings (``[replay]``): its own consumer group and where Capture archives are."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from common import redact
from common.connection_strings import StorageConnectionString
from schemas.bounds import PositiveCount


class CaptureSettings(BaseModel):
    """Event Hubs Capture's archive: Avro files in a Blob container, named by Capture's
    default format ``{Namespace}/{EventHub}/{PartitionId}/{Year}/.../{Second}``; ``prefix``
    is the part before ``{PartitionId}`` (``<namespace>/<event hub>``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: StorageConnectionString | None = None
    account_url: redact.BlobAccountUrl | None = None
    container: str = "capture"
    prefix: str = ""


class ReplaySettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Event Hubs replays read through this consumer group, never the live processor's; its
    # positions are kept in the replay job, not in the checkpoint store.
    consumer_group: str = Field(default="evalstream-replay", min_length=1)
    # Events per partition batch: a store transaction each. Bigger than the live processor's
    # (processor.batch_size, 1000, which bounds alert latency): a backfill has no alerts to
    # hurry, and fewer, bigger transactions made a one-file reprocess 9% faster in events/s
    # (per process: 16,915 -> 18,444 events/s, 4,000 against 1,000; 8,000 gave no more).
    batch_size: PositiveInt = Field(default=4000, le=100_000)
    # Worker processes sharing a job's partitions (``replay --workers``); None: one per core.
    workers: PositiveCount | None = None
    capture: CaptureSettings = Field(default_factory=CaptureSettings)
