"""Pytest fixture for the local Batch server (tests/emulators/batch), one per test session."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
