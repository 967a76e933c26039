"""The Batch account's entities (pools, jobs, tasks) as the JSON bodies the REST API returns,
with typed accessors, plus the id, ETag and state-transition rules they share."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tests.emulators.batch.errors import invalid_property, missing_property

Json = dict[str, object]

MAX_TASKS_PER_COLLECTION = 100
MAX_COLLECTION_BYTES = 1024 * 1024
NODE_ID = "tvmps_local_0"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_etag_counter = itertools.count(1)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_etag() -> str:
    # Batch ETags look like 0x8DC3A1B2C3D4E5F; only uniqueness matters to clients.
    return f"0x8D{time.time_ns():X}{next(_etag_counter):04X}"


def require_id(body: Json, kind: str) -> str:
    ident = body.get("id")
    if not isinstance(ident, str) or not ident:
        raise missing_property("id")
    if not _ID.match(ident):
        raise invalid_property("id", f"{kind} ids are 1-64 letters, digits, '-' or '_'")
    return ident


def as_int(value: object, default: int) -> int:
    """`value` if it is a JSON integer (not a bool), else `default`."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


@dataclass
class Pool:
    body: Json

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def slots(self) -> int:
        nodes = as_int(self.body.get("currentDedicatedNodes"), 0) + as_int(
            self.body.get("currentLowPriorityNodes"), 0
        )
        return nodes * max(1, as_int(self.body.get("taskSlotsPerNode"), 1))


@dataclass(eq=False)
class Task:
    job_id: str
    body: Json
    process: asyncio.subprocess.Process | None = None
    runner: asyncio.Task[None] | None = None
    killed_reason: str | None = None
    # The current attempt ends because its node was preempted (a fault): requeue, no retry.
    preempted: bool = False

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def state(self) -> str:
        return str(self.body["state"])

    @property
    def required_slots(self) -> int:
        return max(1, as_int(self.body.get("requiredSlots"), 1))

    @property
    def execution(self) -> Json:
        info = self.body.setdefault("executionInfo", {"retryCount": 0, "requeueCount": 0})
        assert isinstance(info, dict)
        return info


@dataclass
class Job:
    body: Json
    tasks: dict[str, Task] = field(default_factory=dict)  # by lower-cased id, in creation order

    @property
    def id(self) -> str:
        return str(self.body["id"])

    @property
    def state(self) -> str:
        return str(self.body["state"])

    @property
    def pool_id(self) -> str | None:
        info = self.body.get("poolInfo")
        pool_id = info.get("poolId") if isinstance(info, dict) else None
        return pool_id if isinstance(pool_id, str) else None


def set_state(entity: Json, state: str) -> None:
    """Move a pool, job or task body to `state`, keeping the previous state as Batch does."""
    stamp = now()
    if entity.get("state") != state:
        entity["previousState"] = entity.get("state")
        entity["previousStateTransitionTime"] = entity.get("stateTransitionTime")
    entity["state"] = state
    entity["stateTransitionTime"] = stamp
    entity["lastModified"] = stamp
    entity["eTag"] = new_etag()
