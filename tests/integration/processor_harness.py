"""Run the real processor as a subprocess over a prepared embedded data dir, and inspect it."""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from common.sqlite import sqlite3
from evalstream.settings import DEFAULT_PARTITIONS
from schemas import AppDirectory
from stream.decode import Decoder
from stream.enrich import Enricher, document_id, partition_key
from stream.ports import ReceivedEvent
from stream.producers.simulator import Incident, Simulator
from stream.sources.local_log import LocalLog

# The shipped default: the commands these tests start create or read logs with it.
PARTITIONS = DEFAULT_PARTITIONS
# Processing in the command's own process (``--workers 1``): a worker process costs each run
# an interpreter importing the pipeline. Tests about worker processes ask for them
# (``EVALSTREAM_EMBEDDED__WORKERS`` in their env wins over this).
IN_PROCESS = {"EVALSTREAM_EMBEDDED__WORKERS": "1"}

# The kill tests' stream (``simulated_bodies``) and settings: hot path on, small batches and
# frequent checkpoints, so a kill has many chances to land between steps.
SIMULATED_EVENTS = 20_000
RESENT = 500
KILL_ENV = {
    "EVALSTREAM_PROCESSOR__HOT_PATH": "true",
    "EVALSTREAM_USER_HASH_KEY": "crash-test",
    "EVALSTREAM_PROCESSOR__BATCH_SIZE": "200",
    "EVALSTREAM_PROCESSOR__CHECKPOINT_INTERVAL_S": "0.05",
}


def simulated_bodies(seed: int) -> list[tuple[str | None, bytes]]:
    """8 apps, 5% invalid, a latency regression and an error burst, and 500 valid events
    resent at other positions (producers retry)."""
    simulator = Simulator(
        apps=8,
        rate=50.0,
        seed=seed,
        start=datetime.now(UTC) - timedelta(hours=3),
        invalid_fraction=0.05,
        incidents=[
            Incident.parse("latency_regression:app-001@60+200x5"),
            Incident.parse("error_burst:app-002@120+150x0.5"),
        ],
    )
    events = list(simulator.events(SIMULATED_EVENTS))
    bodies = [(event.app_id, event.body) for event in events]
    rng = random.Random(seed)
    resent = rng.sample([b for b, e in zip(bodies, events, strict=True) if e.valid], RESENT)
    return bodies + resent


@dataclass
class Expected:
    """What the store must hold after processing the appended bodies exactly once."""

    telemetry: set[tuple[str, str]] = field(default_factory=set)
    quarantine: set[str] = field(default_factory=set)
    last_sequence: dict[int, int] = field(default_factory=dict)


def prepare(data_dir: Path, bodies: Iterable[tuple[str | None, bytes]]) -> Expected:
    """Append bodies to the data dir's log and work out the exact expected store contents."""
    items = list(bodies)
    log = LocalLog(data_dir / "log.db", PARTITIONS)
    try:
        positions = log.append(items)
    finally:
        log.close()
    now = datetime.now(UTC)
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"unused", "local")
    expected = Expected()
    for (_, body), (partition, sequence) in zip(items, positions, strict=True):
        decoded = decoder.decode(body, now)
        for accepted in decoded.accepted:
            event = accepted.event
            expected.telemetry.add(
                (partition_key(event.app_id, event.timestamp), document_id(event))
            )
        position = ReceivedEvent(body, str(partition), sequence, now, str(sequence))
        for rejected in decoded.rejected:
            expected.quarantine.add(enricher.quarantine(rejected, position, now).id)
        expected.last_sequence[partition] = max(expected.last_sequence.get(partition, -1), sequence)
    return expected


def processor_command(data_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "evalstream",
        "process",
        "--data-dir",
        str(data_dir),
        "--no-ingest",
        "--log-level",
        "WARNING",
        *extra,
    ]


def start_processor(
    data_dir: Path,
    env: dict[str, str],
    *extra: str,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """``preexec_fn``: run in the command's process before it starts (its worker processes
    inherit what it sets: limits, ignored signals)."""
    # Its own process group: a hard kill takes its worker processes too (``kill_hard``).
    return subprocess.Popen(
        processor_command(data_dir, *extra),
        env={**os.environ, **IN_PROCESS, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=preexec_fn,
    )


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    """``url`` answers 200 now."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def stored_count(data_dir: Path) -> int:
    """Telemetry plus quarantine rows, read through a separate connection."""
    path = data_dir / "store.db"
    if not path.exists():
        return 0
    connection = sqlite3.connect(path, timeout=30)
    try:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        if not {"telemetry", "quarantine"} <= tables:
            return 0
        return sum(
            connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("telemetry", "quarantine")
        )
    finally:
        connection.close()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.01
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the processor and its worker processes at once (a power cut of the command)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def worker_pids(process: subprocess.Popen[bytes]) -> list[int]:
    """The processing worker processes of a running ``process --workers N``."""
    import psutil

    found = []
    for child in psutil.Process(process.pid).children():
        try:
            if "evalstream.worker" in child.cmdline():
                found.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def flocks_held(pid: int) -> int:
    """How many ``flock`` locks process ``pid`` holds (a worker's: its partitions' lock files)."""
    count = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1:2] == ["FLOCK"] and fields[4] == str(pid):
            count += 1
    return count


def store_contents(data_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    connection = sqlite3.connect(data_dir / "store.db")
    try:
        telemetry = [(pk, id_) for pk, id_ in connection.execute("SELECT pk, id FROM telemetry")]
        quarantine = [row[0] for row in connection.execute("SELECT id FROM quarantine")]
    finally:
        connection.close()
    return telemetry, quarantine


def checkpoints(data_dir: Path, consumer_group: str = "$Default") -> dict[int, int]:
    connection = sqlite3.connect(data_dir / "log.db")
    try:
        rows = connection.execute(
            "SELECT partition, sequence FROM checkpoints WHERE consumer_group = ?",
            (consumer_group,),
        ).fetchall()
    finally:
        connection.close()
    return dict(rows)


def kill_at_points(data_dir: Path, env: dict[str, str], points: list[int]) -> None:
    """Start the processor and SIGKILL it once ``point`` records are stored, for each point.
    A processor that exits first, or never gets there, fails the test with what it printed."""
    for point in points:
        process = start_processor(data_dir, env)
        wait_for_stored(data_dir, process, point)
        kill_hard(process)
        assert process.returncode == -9


def wait_for_stored(data_dir: Path, process: subprocess.Popen[bytes], count: int) -> None:
    """Wait until ``count`` records are stored by the running ``process``; one that exits
    first, or never gets there, fails the test with its stacks and what it printed."""
    try:
        wait_until(
            lambda: stored_count(data_dir) >= count or process.poll() is not None,
            timeout=180,
            what=f"{count} stored records",
            interval=0.005,
        )
        assert process.poll() is None, f"exited with {process.returncode} before {count}"
    except AssertionError as exc:
        raise stuck(process, str(exc)) from None


def stuck(process: subprocess.Popen[bytes], what: str) -> AssertionError:
    """The error for a processor that did not get where a test waited for it: every thread's
    stack of the command and its workers (SIGUSR1) and all it printed, after killing it."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGUSR1)
        assert process.stdout is not None
        select.select([process.stdout], [], [], 10)
        kill_hard(process)
    return AssertionError(f"{what}; the processor printed:\n{printed(process)}")


def printed(process: subprocess.Popen[bytes]) -> str:
    """What a finished processor wrote to its stdout and stderr."""
    assert process.stdout is not None
    return process.stdout.read().decode(errors="replace")


def run_until_idle(data_dir: Path, env: dict[str, str]) -> None:
    process = start_processor(data_dir, env, "--until-idle", "1")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output.decode()


async def drain_subscription(data_dir: Path, name: str = "all") -> list[str]:
    """Receive and complete everything in an embedded subscription: the message id of every
    delivery, in order."""
    from alerts.sqlite_bus import SqliteAlertReceiver

    ids: list[str] = []
    async with SqliteAlertReceiver(data_dir / "alerts.db", name) as receiver:
        while alerts := await receiver.receive(max_count=100, max_wait_s=0.2):
            for alert in alerts:
                ids.append(alert.message_id)
                await receiver.complete(alert)
    return ids


async def drain_breaches(data_dir: Path, name: str = "all") -> list[tuple[str, str]]:
    """Receive and complete everything in an embedded subscription: (message id, breach JSON)
    of every delivery, in order."""
    from alerts.sqlite_bus import SqliteAlertReceiver

    delivered: list[tuple[str, str]] = []
    async with SqliteAlertReceiver(data_dir / "alerts.db", name) as receiver:
        while alerts := await receiver.receive(max_count=100, max_wait_s=0.2):
            for alert in alerts:
                delivered.append((alert.message_id, alert.breach.model_dump_json()))
                await receiver.complete(alert)
    return delivered


def stored_documents(data_dir: Path) -> dict[tuple[str, str], dict[str, object]]:
    """Every stored document by (pk, id), without its processing-time fields (when it was
    processed, its lag): what a crash may change, everything else must not."""
    import orjson

    connection = sqlite3.connect(data_dir / "store.db")
    try:
        documents = {}
        for pk, id_, doc in connection.execute("SELECT pk, id, doc FROM telemetry"):
            fields = orjson.loads(doc)
            del fields["ingest"]["processed_at"], fields["ingest"]["lag_ms"]
            documents[(pk, id_)] = fields
    finally:
        connection.close()
    return documents
