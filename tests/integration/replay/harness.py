"""What the replay tests share: a live run to compare against, the CLI, and store readers."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson

from common.sqlite import sqlite3
from stream.producers.simulator import Incident, Simulator
from tests.integration.processor_harness import stored_documents

INCIDENTS = [
    Incident.parse("latency_regression:app-000@60+120x5"),
    Incident.parse("error_burst:app-001@100+60x0.5"),
]
ENV = {
    # The live run processes in its own process (processor_harness.IN_PROCESS).
    "EVALSTREAM_EMBEDDED__WORKERS": "1",
    "EVALSTREAM_PROCESSOR__HOT_PATH": "true",
    "EVALSTREAM_PROCESSOR__BATCH_SIZE": "200",
    "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.05",
    "EVALSTREAM_REPLAY__BATCH_SIZE": "200",
}


def stream(
    count: int, seed: int, start: datetime, resent: float = 0.0, late: float = 0.0
) -> list[tuple[str | None, bytes]]:
    """The simulated events; a share ``resent`` of them sent again right after, as a producer
    retrying a request whose answer it lost; a share ``late`` held back and sent 1-200 events
    later (up to ~40 s of an app's events), as a producer's buffer flushed late."""
    simulator = Simulator(
        apps=4, rate=20.0, seed=seed, start=start, incidents=INCIDENTS, invalid_fraction=0.02
    )
    chance = random.Random(seed)
    bodies: list[tuple[str | None, bytes]] = []
    held: list[tuple[int, tuple[str | None, bytes]]] = []
    for event in simulator.events(count):
        item = (event.app_id, event.body)
        if late and chance.random() < late:
            held.append((len(bodies) + chance.randint(1, 200), item))
        else:
            bodies.append(item)
            if resent and chance.random() < resent:
                bodies.append(item)
        while held and held[0][0] <= len(bodies):
            bodies.append(held.pop(0)[1])
    return bodies + [item for _, item in held]


def evalstream(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *args],
        env={**os.environ, **ENV, **(env or {})},
        input=stdin,
        capture_output=True,
        timeout=timeout,
    )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def start(
    *args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> subprocess.Popen[bytes]:
    """The command running, reading ``stdin`` (from a file: the test need not feed a pipe)."""
    if stdin is None:
        return _popen(args, env, None)
    with tempfile.TemporaryFile() as given:
        given.write(stdin)
        given.seek(0)
        return _popen(args, env, given)


def _popen(
    args: tuple[str, ...], env: dict[str, str] | None, stdin: IO[bytes] | None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "evalstream", *args],
        env={**os.environ, **ENV, **(env or {})},
        stdin=stdin,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@dataclass
class Live:
    """A data dir the live processor went through, and what it stored and published."""

    data_dir: Path
    ndjson: Path
    start: datetime
    end: datetime
    breach_ids: list[str]

    def window(self) -> list[str]:
        return ["--from", self.start.isoformat(), "--to", self.end.isoformat()]


def live_run(
    directory: Path,
    count: int,
    seed: int,
    resent: float = 0.0,
    late: float = 0.0,
    *,
    env: dict[str, str] | None = None,
) -> Live:
    """Send a simulated stream with the real producer path, process it with the hot path
    (``env``: settings of both commands)."""
    from tests.integration.processor_harness import drain_subscription

    began = datetime.now(UTC) - timedelta(hours=2)
    bodies = stream(count, seed, began, resent, late)
    ndjson = directory / "stream.ndjson"
    ndjson.write_bytes(b"\n".join(body for _, body in bodies) + b"\n")
    data_dir = directory / "live"
    sent = evalstream("send", str(ndjson), "--data-dir", str(data_dir), env=env)
    assert sent.returncode == 0, sent.stderr
    processed = evalstream(
        "process",
        "--data-dir",
        str(data_dir),
        "--no-ingest",
        "--until-idle",
        "1",
        "--log-level",
        "WARNING",
        env=env,
    )
    assert processed.returncode == 0, processed.stderr
    import asyncio

    breach_ids = asyncio.run(drain_subscription(data_dir))
    return Live(
        data_dir,
        ndjson,
        began - timedelta(hours=1),
        datetime.now(UTC) + timedelta(hours=1),
        breach_ids,
    )


def documents(
    data_dir: Path, *, without: tuple[str, ...] = ("ingest",)
) -> dict[tuple[str, str], Any]:
    """Stored documents by (pk, id), without the given top-level fields."""
    connection = sqlite3.connect(data_dir / "store.db")
    try:
        out = {}
        for pk, id_, doc in connection.execute("SELECT pk, id, doc FROM telemetry"):
            fields = orjson.loads(doc)
            for name in without:
                fields.pop(name, None)
            out[(pk, id_)] = fields
        return out
    finally:
        connection.close()


def stored_bytes(data_dir: Path) -> dict[tuple[str, str], bytes]:
    """Stored documents by (pk, id), as stored but for when they were processed (``ingest``'s
    ``processed_at`` and ``lag_ms``): their JSON, in the stored order of their fields."""
    return {key: orjson.dumps(fields) for key, fields in stored_documents(data_dir).items()}


def quarantine(data_dir: Path) -> dict[tuple[str, str], Any]:
    """Quarantine records by (pk, id), without ``received_at`` (when it was processed)."""
    connection = sqlite3.connect(data_dir / "store.db")
    try:
        out = {}
        for pk, id_, doc in connection.execute("SELECT pk, id, doc FROM quarantine"):
            fields = orjson.loads(doc)
            fields.pop("received_at", None)
            out[(pk, id_)] = fields
        return out
    finally:
        connection.close()


def report(data_dir: Path, job: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads((data_dir / "replays" / f"{job}.json").read_bytes())
    return data
