"""Faults the local Batch server can inject, set through its ``/_test/faults`` routes.

- ``http``: answer the next ``count`` requests whose method and path match with an error status
  (503, 500, 429 with ``Retry-After``) before they reach the service: nothing happens to the
  account, as when the service sheds load. With ``body``, the answer is that text as an HTML
  page with the given status (200 too): what a proxy or captive portal answers. With ``json``,
  the answer is that JSON value with the given status: a JSON answer of a shape the service
  never gives (``[]`` for a job, a task without ``state``). With ``after``, that many matching
  requests are served as usual first (the second read of a pool, not the first).
- ``allocation``: the pool ``pool`` gets no nodes, and reports a resize error of ``code`` and
  ``message`` (e.g. AccountCoreQuotaReached), until faults are reset: set it before the pool is
  created or resized.
- ``kill``: watch running tasks' stderr line by line; when a task of ``job`` (and ``task``, if
  given) has written ``after_lines`` lines matching ``pattern`` in its current attempt, SIGKILL
  its process group. ``preempt=False`` is a task killed on its node (exit -9, retried within
  ``maxTaskRetryCount``); ``preempt=True`` is its node being preempted (requeued without using a
  retry, ``requeueCount`` + 1), as Batch does on Spot nodes.
- ``collection_size``: the next ``count`` ``addtaskcollection`` requests whose body exceeds
  ``max_bytes`` are refused with 413 ``RequestBodyTooLarge``, as the service refuses any body
  above 1 MB (a lower limit lets tests reject a chunk without building a megabyte of tasks).

``GET /_test/stats`` tells how many requests each route received and how many faults fired.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

from tests.emulators.batch.entities import Json


@dataclass
class HttpFault:
    status: int
    count: int
    match: re.Pattern[str]
    method: str | None = None
    retry_after_s: int | None = None
    body: str | None = None
    answer: str | None = None  # a JSON answer, encoded
    after: int = 0  # matching requests still let through before the fault answers

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and bool(self.match.search(path))


@dataclass
class KillFault:
    job: str
    pattern: re.Pattern[str]
    after_lines: int
    task: str | None = None
    preempt: bool = False
    fired: bool = False

    def applies(self, job_id: str, task_id: str) -> bool:
        return (
            not self.fired
            and self.job.lower() == job_id.lower()
            and (self.task is None or self.task.lower() == task_id.lower())
        )


@dataclass
class AllocationFault:
    pool: str
    code: str
    message: str


@dataclass
class CollectionSizeFault:
    max_bytes: int
    count: int


@dataclass
class Faults:
    """Every pending fault and what fired, owned by the server's one event loop."""

    http: list[HttpFault] = field(default_factory=list)
    kills: list[KillFault] = field(default_factory=list)
    collection_size: list[CollectionSizeFault] = field(default_factory=list)
    allocations: list[AllocationFault] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)
    injected: Counter[str] = field(default_factory=Counter)

    def add(self, kind: str, body: Json) -> None:
        """Add one fault from its JSON description; ValueError when it is malformed."""
        if kind == "http":
            status = _int(body, "status")
            retry_after = body.get("retry_after_s")
            method = body.get("method")
            text = body.get("body")
            answer = json.dumps(body["json"]) if "json" in body else None
            self.http.append(
                HttpFault(
                    status=status,
                    count=_int(body, "count", 1),
                    match=re.compile(str(body.get("match", ".*"))),
                    method=str(method).upper() if method else None,
                    retry_after_s=int(retry_after) if isinstance(retry_after, int) else None,
                    body=str(text) if text is not None else None,
                    answer=answer,
                    after=_int(body, "after", 0),
                )
            )
        elif kind == "kill":
            task = body.get("task")
            self.kills.append(
                KillFault(
                    job=str(body["job"]),
                    pattern=re.compile(str(body.get("pattern", ".*"))),
                    after_lines=_int(body, "after_lines", 1),
                    task=str(task) if task else None,
                    preempt=bool(body.get("preempt", False)),
                )
            )
        elif kind == "collection_size":
            self.collection_size.append(
                CollectionSizeFault(max_bytes=_int(body, "max_bytes"), count=_int(body, "count", 1))
            )
        elif kind == "allocation":
            self.allocations.append(
                AllocationFault(
                    pool=str(body["pool"]),
                    code=str(body.get("code", "AllocationFailed")),
                    message=str(body.get("message", "Injected by a test fault.")),
                )
            )
        else:
            raise ValueError(
                f"unknown fault kind {kind!r} (http, kill, collection_size, allocation)"
            )

    def take_http(self, method: str, path: str) -> HttpFault | None:
        for fault in self.http:
            if fault.count > 0 and fault.matches(method, path):
                if fault.after > 0:
                    fault.after -= 1
                    return None
                fault.count -= 1
                self.injected[f"http_{fault.status}"] += 1
                return fault
        return None

    def allocation_failure(self, pool_id: str) -> AllocationFault | None:
        """The fault that keeps ``pool_id`` from getting nodes, if any."""
        return next((f for f in self.allocations if f.pool.lower() == pool_id.lower()), None)

    def take_collection_size(self, size: int) -> int | None:
        """The limit a collection body of ``size`` bytes breaks, if a fault applies."""
        for fault in self.collection_size:
            if fault.count > 0 and size > fault.max_bytes:
                fault.count -= 1
                self.injected["collection_size"] += 1
                return fault.max_bytes
        return None

    def kill_for(
        self, job_id: str, task_id: str, matched: dict[int, int], line: str
    ) -> KillFault | None:
        """Count ``line`` against the task's kill faults (``matched``: per fault index, lines
        seen in this attempt); the fault that fires now, if any."""
        for index, fault in enumerate(self.kills):
            if not fault.applies(job_id, task_id) or not fault.pattern.search(line):
                continue
            matched[index] = matched.get(index, 0) + 1
            if matched[index] >= fault.after_lines:
                fault.fired = True
                self.injected["preempt" if fault.preempt else "kill"] += 1
                return fault
        return None

    def watching(self, job_id: str, task_id: str) -> bool:
        return any(fault.applies(job_id, task_id) for fault in self.kills)

    def reset(self) -> None:
        self.http.clear()
        self.kills.clear()
        self.collection_size.clear()
        self.allocations.clear()
        self.requests.clear()
        self.injected.clear()

    def stats(self) -> Json:
        return {
            "requests": dict(self.requests),
            "injected": dict(self.injected),
            "pending_kills": sum(not fault.fired for fault in self.kills),
        }


def _int(body: Json, name: str, default: int | None = None) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"fault field {name!r} must be an integer")
    return value
