"""Pytest fixture for the local Batch server (tests/emulators/batch), one per test session."""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.batch import DEFAULT_ACCOUNT_KEY, DEFAULT_ACCOUNT_NAME
from tests.emulators.processes import ServerProcess, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BATCH_READY = re.compile(r"batch server ready at http://[^:\s]+:(?P<port>\d+)/")


@dataclass(frozen=True)
class BatchServer:
    """A running local Batch account; tasks run under `work_dir`."""

    port: int
    work_dir: Path
    host: str = HOST
    account_name: str = DEFAULT_ACCOUNT_NAME
    account_key: str = DEFAULT_ACCOUNT_KEY

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- faults (tests/emulators/batch/faults.py) ------------------------------------------

    def _control(self, method: str, path: str, body: dict[str, object] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - the local test server
            f"{self.url}/_test/{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read() or b"null")

    def fail_requests(
        self,
        status: int,
        count: int,
        *,
        match: str = ".*",
        method: str | None = None,
        retry_after_s: int | None = None,
        body: str | None = None,
        answer: object = None,
        after: int = 0,
    ) -> None:
        """Answer the next `count` matching requests with `status` (503, 500, 429...), or
        with `body` as an HTML page of that status (a proxy's answer, not the service's), or
        with `answer` as JSON (a shape the service never gives for that call); the first
        `after` matching requests are served as usual."""
        fault: dict[str, object] = {"status": status, "count": count, "match": match}
        if method is not None:
            fault["method"] = method
        if retry_after_s is not None:
            fault["retry_after_s"] = retry_after_s
        if body is not None:
            fault["body"] = body
        if answer is not None:
            fault["json"] = answer
        if after:
            fault["after"] = after
        self._control("POST", "faults/http", fault)

    def fail_allocations(self, pool: str, *, code: str, message: str) -> None:
        """`pool` gets no nodes and reports a resize error of `code` until faults are reset
        (set it before the pool is created)."""
        self._control("POST", "faults/allocation", {"pool": pool, "code": code, "message": message})

    def kill_task(
        self,
        job: str,
        *,
        pattern: str,
        after_lines: int = 1,
        task: str | None = None,
        preempt: bool = False,
    ) -> None:
        """SIGKILL a task of `job` once an attempt wrote `after_lines` stderr lines matching
        `pattern`: retried as a failure, or requeued as a preempted node's task."""
        fault: dict[str, object] = {
            "job": job,
            "pattern": pattern,
            "after_lines": after_lines,
            "preempt": preempt,
        }
        if task is not None:
            fault["task"] = task
        self._control("POST", "faults/kill", fault)

    def reject_collections_over(self, max_bytes: int, count: int = 1) -> None:
        """Refuse the next `count` task collections above `max_bytes` with 413."""
        self._control("POST", "faults/collection_size", {"max_bytes": max_bytes, "count": count})

    def reset_faults(self) -> None:
        """Drop pending faults and zero the request and fault counters."""
        self._control("DELETE", "faults")

    def stats(self) -> dict[str, Any]:
        """``requests`` per route, ``injected`` per fault kind, ``pending_kills``."""
        stats: dict[str, Any] = self._control("GET", "stats")
        return stats


def start_batch(work_dir: Path, log_dir: Path, *, max_concurrency: int = 8) -> ServerProcess:
    """Run ``python -m tests.emulators.batch`` on a free port."""
    command = [
        sys.executable,
        "-m",
        "tests.emulators.batch",
        "--host",
        HOST,
        "--port",
        "0",
        "--work-dir",
        str(work_dir),
        "--max-concurrency",
        str(max_concurrency),
    ]
    return start_server("batch", command, ready=BATCH_READY, log_dir=log_dir, cwd=REPO_ROOT)


@pytest.fixture(scope="session")
def batch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchServer]:
    root = tmp_path_factory.mktemp("batch")
    work_dir = root / "nodes"
    server = start_batch(work_dir, root)
    try:
        yield BatchServer(port=server.port, work_dir=work_dir)
    finally:
        server.stop()
