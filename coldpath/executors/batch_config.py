"""Settings of the Azure Batch executor and its pool, and the autoscale formula they generate.

No SDK here: the settings are composed into ``evalstream.settings`` (``azure.batch``) and read
by the adapter modules (``coldpath.executors.batch``, ``batch_pool``, ``blob_staging``).
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import timedelta
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from common import redact
from common.connection_strings import StorageConnectionString
from schemas.bounds import (
    MAX_COUNT,
    MAX_DURATION_MINUTES,
    MAX_DURATION_S,
    Count,
    Duration,
    PositiveCount,
    PositiveSeconds,
)

# The service's documented limits of one add-task-collection call.
MAX_TASKS_PER_CALL = 100
MAX_BYTES_PER_CALL = 1024 * 1024
# Batch evaluates an autoscale formula at most this often.
MIN_EVALUATION_INTERVAL = timedelta(minutes=5)
MAX_FORMULA_BYTES = 8 * 1024
# Batch's default resize timeout: how long a pool may take to get the nodes it asked for.
RESIZE_TIMEOUT = timedelta(minutes=15)
MAX_DURATION = timedelta(seconds=MAX_DURATION_S)
# Attempts a task with unlimited retries (max_task_retry_count = -1) is counted for.
UNLIMITED_RETRIES_COUNTED_AS = 10


class ImageSettings(BaseModel):
    """A Marketplace image and the node agent that matches it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    publisher: str = "canonical"
    offer: str = "ubuntu-24_04-lts"
    sku: str = "server"
    version: str = "latest"
    node_agent_sku_id: str = "batch.node.ubuntu 24.04"


class PoolSettings(BaseModel):
    """The pool shard tasks run on; ``evalstream coldpath pool ensure`` makes it so.

    ``profile`` picks the defaults of the two documented profiles: ``production`` (dedicated
    nodes: never evicted, for deadlines) or ``cost_saving`` (Spot nodes — Batch's legacy
    low-priority VMs were retired in September 2025 — for short retry-safe tasks, up to ~80%
    cheaper; Batch service accounts and user-subscription accounts both get Spot today).
    ``spot_share`` overrides the profile's share of Spot nodes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(default="evalstream-coldpath", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    profile: Literal["production", "cost_saving"] = "production"
    vm_size: str = "standard_d2s_v3"
    image: ImageSettings = Field(default_factory=ImageSettings)
    # Fixed size when autoscale is off.
    dedicated_nodes: Count = 1
    spot_nodes: Count = 0
    autoscale: bool = True
    min_nodes: Count = 0
    max_nodes: PositiveCount = 10
    spot_share: float | None = Field(default=None, ge=0.0, le=1.0)
    evaluation_interval: Duration = MIN_EVALUATION_INTERVAL
    # How many of the last minutes' pending-task samples the formula looks at.
    sample_minutes: int = Field(default=5, gt=0, le=MAX_DURATION_MINUTES)
    # Shard tasks are mostly I/O (store reads, bus publishes): several per core.
    task_slots_per_node: int = Field(default=4, ge=1, le=256)
    scheduling: Literal["pack", "spread"] = "pack"
    # Keep it light: node start-up is part of queue latency. An image with evalstream baked in
    # (or a container image) makes this a no-op.
    start_task: str | None = "/bin/sh -c 'python3 -m pip install --quiet evalstream'"

    @model_validator(mode="after")
    def _bounds(self) -> PoolSettings:
        if self.min_nodes > self.max_nodes:
            raise ValueError("min_nodes must not exceed max_nodes")
        if self.evaluation_interval < MIN_EVALUATION_INTERVAL:
            raise ValueError("evaluation_interval: Batch evaluates autoscale at most every 5 min")
        return self

    @property
    def capacity(self) -> int:
        """Tasks the pool runs at once at its largest (autoscale's max_nodes, or its fixed
        size), by these settings."""
        nodes = self.max_nodes if self.autoscale else self.dedicated_nodes + self.spot_nodes
        return nodes * self.task_slots_per_node

    @property
    def effective_spot_share(self) -> float:
        if self.spot_share is not None:
            return self.spot_share
        return 1.0 if self.profile == "cost_saving" else 0.0


def autoscale_formula(pool: PoolSettings) -> str:
    """The pool's autoscale formula: nodes follow pending (active + running) tasks.

    Nodes wanted = ceil(max(latest, mean over the last ``sample_minutes``) pending tasks / task
    slots per node), clamped to [min_nodes, max_nodes]; ``spot_share`` of them (rounded down)
    are Spot, the rest dedicated. Running tasks finish before a node is removed. The target is
    a request: the account's core quota can cap it.
    """
    share = pool.effective_spot_share
    interval = f"TimeInterval_Minute * {pool.sample_minutes}"
    statements = [
        # Too few samples yet (a new pool): follow the latest one alone.
        f"$samples = $PendingTasks.GetSamplePercent({interval})",
        "$pending = $samples < 70 ? max(0, $PendingTasks.GetSample(1)) : "
        f"max($PendingTasks.GetSample(1), avg($PendingTasks.GetSample({interval})))",
        f"$wanted = ceil($pending / {pool.task_slots_per_node})",
        f"$nodes = min({pool.max_nodes}, max({pool.min_nodes}, $wanted))",
        f"$spot = floor($nodes * {share:g})",
        "$TargetLowPriorityNodes = $spot",
        "$TargetDedicatedNodes = $nodes - $spot",
        "$NodeDeallocationOption = taskcompletion",
    ]
    formula = ";\n".join(statements) + ";"
    assert len(formula.encode()) <= MAX_FORMULA_BYTES
    return formula


class StagingSettings(BaseModel):
    """Blob container where manifests (and optional per-shard result files) are staged.

    ``connection_string`` (its account key also signs read-only SAS URLs handed to tasks), or
    ``account_url`` with DefaultAzureCredential ("Storage Blob Data Contributor" for the trigger,
    "Storage Blob Data Reader" for task nodes' identity, which then read by plain URL).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    connection_string: StorageConnectionString | None = None
    account_url: redact.BlobAccountUrl | None = None
    container: str = "coldpath-manifests"
    # How long a task's SAS URL stays valid: longer than a job can wait and retry.
    sas_ttl: Duration = timedelta(days=7)
    # Write each shard's results as JSON lines beside the manifest (besides the store).
    result_files: bool = False


class BatchSettings(BaseModel):
    """The Azure Batch executor: one job per manifest, one task per shard.

    Authenticate with ``account_name`` + ``account_key`` (shared key), or with
    DefaultAzureCredential (role "Azure Batch Job Submitter" on the account for the trigger).
    Tasks reach the store and the bus with the node's managed identity, or with what
    ``environment`` gives them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    account_url: str | None = None
    account_name: str | None = None
    account_key: SecretStr | None = None
    pool: PoolSettings = Field(default_factory=PoolSettings)
    staging: StagingSettings = Field(default_factory=StagingSettings)
    # Retries after a failing exit (a preempted node's requeue does not count).
    max_task_retry_count: int = Field(default=3, ge=-1, le=MAX_COUNT)
    max_wall_clock_time: Duration = timedelta(hours=1)
    retention_time: Duration = timedelta(days=7)
    # The program on the node; the task appends `coldpath run-shard --manifest-url ...`.
    command: str = "evalstream"
    task_log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Job-wide environment of every task (EVALSTREAM_* settings of the azure backend). Prefer
    # identities to secrets here: anyone who can read the job can read these values.
    environment: dict[str, SecretStr] = Field(default_factory=dict)
    # Run tasks as the pool's auto-user (task scope keeps tasks from seeing each other's files).
    auto_user_scope: Literal["task", "pool"] = "task"
    elevated: bool = False
    priority: int = Field(default=0, ge=-1000, le=1000)
    # Submission: tasks per add-task-collection call (≤ 100) and calls in flight.
    chunk_size: int = Field(default=MAX_TASKS_PER_CALL, ge=1, le=MAX_TASKS_PER_CALL)
    submit_concurrency: PositiveCount = 8
    submit_retries: Count = 6
    # How often --wait reads the job's task counts, and how much stderr a failed task shows.
    poll_interval_s: PositiveSeconds = 5.0
    stderr_excerpt_bytes: PositiveCount = 2000
    # How long --wait follows a job before giving up on it (the job is left as it is); None:
    # derived from the tasks' limits (``follow_deadline``).
    follow_timeout: Duration | None = Field(default=None, gt=timedelta(0))

    @field_validator("account_key")
    @classmethod
    def _base64_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                # An empty key decodes too, and signs every request wrongly.
                if not base64.b64decode(value.get_secret_value(), validate=True):
                    raise ValueError("empty")
            except (binascii.Error, ValueError):
                raise ValueError(
                    "is not base64: copy a key of the Batch account (portal: Keys)"
                ) from None
        return value

    def follow_deadline(self, shards: int) -> timedelta:
        """How long following a job of ``shards`` tasks may take: ``follow_timeout``, or the
        longest its tasks can take when they get nodes — (max_task_retry_count + 1) ×
        max_wall_clock_time for each wave of tasks the pool runs at once (shards ÷ the pool's
        capacity, rounded up) — plus an autoscale interval and Batch's resize timeout for
        nodes to arrive; at most MAX_DURATION_S (each is bounded, their product is not)."""
        if self.follow_timeout is not None:
            return self.follow_timeout
        retries = self.max_task_retry_count
        attempts = UNLIMITED_RETRIES_COUNTED_AS if retries < 0 else retries + 1
        waves = max(1, math.ceil(shards / max(1, self.pool.capacity)))
        allocation = RESIZE_TIMEOUT
        if self.pool.autoscale:
            allocation += self.pool.evaluation_interval
        tasks_s = self.max_wall_clock_time.total_seconds() * attempts * waves
        return min(allocation + timedelta(seconds=min(tasks_s, MAX_DURATION_S)), MAX_DURATION)

    @field_validator("account_url")
    @classmethod
    def _account_url(cls, url: str | None) -> str | None:
        # Checked here: the SDK fails at the first request, and its error quotes the URL
        # whole (a SAS or userinfo pasted into it with it).
        if url is not None:
            redact.check_account_url(
                url,
                "https://ACCOUNT.REGION.batch.azure.com; the key goes in azure.batch.account_key",
            )
        return url
