"""Ingest in worker processes of its own: a worker killed under load is replaced, a stop drains
the requests in flight, every event answered as accepted is in the log and the store once; workers
that cannot start end the run with an error instead of being restarted for ever."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import signal
import socket
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from common.retry import Backoff
from common.sqlite import sqlite3
from evalstream.ingest_pool import IngestPool, ingest_in_workers
from evalstream.settings import load_settings
from stream.exceptions import StreamError
from tests.integration.processor_harness import (
    run_until_idle,
    start_processor,
    store_contents,
    wait_until,
)
from tests.procfs import environment

pytestmark = pytest.mark.integration

ENV = {"EVALSTREAM_PROCESSOR__HOT_PATH": "false"}
WHEN = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
CLIENTS = 4
BATCH = 50


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def ingest_workers(pid: int) -> set[int]:
    """The ingest worker processes the processor ``pid`` runs now."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = set()
    for child in children:
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue  # gone meanwhile
        if b"evalstream.ingest_worker" in command:
            workers.add(int(child))
    return workers


class Clients:
    """``CLIENTS`` threads posting batches of new events until stopped, never sending one
    again: what was answered 202 must be kept, anything else may or may not be."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.acknowledged: list[str] = []
        self.posted: list[str] = []
        self.failures: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._post, args=(n,)) for n in range(CLIENTS)]

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def acked(self) -> int:
        with self._lock:
            return len(self.acknowledged)

    def _post(self, client: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            for batch in itertools.count():
                if self.stop.is_set():
                    return
                ids = [f"c{client}-{batch}-{i}" for i in range(BATCH)]
                events = [
                    {"app_id": f"app-{i % 7}", "timestamp": WHEN, "trace_id": e, "event_id": e}
                    for i, e in enumerate(ids)
                ]
                with self._lock:
                    self.posted.extend(ids)
                try:
                    answer = http.post("/api/telemetry", content=orjson.dumps({"events": events}))
                except httpx.TransportError as exc:
                    with self._lock:
                        self.failures[type(exc).__name__] += 1
                    continue
                with self._lock:
                    if answer.status_code == 202:
                        assert answer.json()["ids"] == ids
                        self.acknowledged.extend(ids)
                    else:
                        self.failures[str(answer.status_code)] += 1


class SlowRequest:
    """A request whose headers and first half of the body are sent now, the rest on ``finish``."""

    def __init__(self, port: int, event: dict[str, str]) -> None:
        self.body = orjson.dumps({**event, "event_id": event["trace_id"]})
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = b"POST /api/telemetry HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n"
        self.sock.sendall(head % len(self.body) + self.body[:10])
        self.port = port
        wait_until(self._taken, 30, "a worker to take the slow request")

    def _taken(self) -> bool:
        """A worker accepted the connection (its side has a socket inode: not in the queue)
        and read what was sent (nothing waits in its receive queue)."""
        ours = f":{self.sock.getsockname()[1]:04X}"
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(f":{self.port:04X}") and fields[2].endswith(ours):
                return fields[9] != "0" and int(fields[4].split(":")[1], 16) == 0
        return False

    def finish(self) -> int:
        self.sock.sendall(self.body[10:])
        answer = self.sock.recv(65536)
        self.sock.close()
        assert answer, "the connection closed without an answer: the request in flight was dropped"
        return int(answer.split()[1])


def listening_inode(port: int) -> str:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def holds(pid: int, inode: str) -> bool:
    """Whether process ``pid`` still has the socket ``inode`` open."""
    try:
        return any(
            os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir()
        )
    except FileNotFoundError:
        return False


def logged_ids(data_dir: Path) -> tuple[Counter[str], dict[int, list[int]]]:
    """How often each event id is in the log, and each partition's sequence numbers."""
    connection = sqlite3.connect(data_dir / "log.db")
    try:
        counts: Counter[str] = Counter()
        sequences: dict[int, list[int]] = {}
        for partition, sequence, body in connection.execute(
            "SELECT partition, sequence, body FROM events ORDER BY partition, sequence"
        ):
            counts[orjson.loads(body)["event_id"]] += 1
            sequences.setdefault(partition, []).append(sequence)
    finally:
        connection.close()
    return counts, sequences


def test_a_killed_ingest_worker_is_replaced_and_no_acknowledged_event_is_lost(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_processor(
        data_dir, ENV, "--ingest", "--ingest-port", str(port), "--ingest-workers", "2"
    )
    try:
        wait_until(lambda: len(ingest_workers(process.pid)) == 2, 60, "two ingest workers")
        first = ingest_workers(process.pid)
        assert [environment(pid).get("OPENBLAS_NUM_THREADS") for pid in first] == ["1", "1"]
        with Clients(url) as clients:
            wait_until(lambda: clients.acked() >= 2_000, 60, "2,000 acknowledged events")
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            wait_until(
                lambda: len(ingest_workers(process.pid) - first) == 1,
                60,
                "a new worker in place of the killed one",
            )
            assert victim not in ingest_workers(process.pid)
            after_kill = clients.acked()
            wait_until(
                lambda: clients.acked() >= after_kill + 2_000, 60, "2,000 more after the kill"
            )
            # Stopped while the clients keep posting, with one request half sent: the workers
            # stop accepting, and the requests in flight are still answered.
            listener = listening_inode(port)
            workers = ingest_workers(process.pid)
            slow = SlowRequest(port, {"app_id": "slow", "timestamp": WHEN, "trace_id": "slow"})
            process.send_signal(signal.SIGTERM)
            wait_until(
                lambda: not any(holds(pid, listener) for pid in workers),
                30,
                "the workers to stop accepting",
            )
            assert slow.finish() == 202
            output, _ = process.communicate(timeout=60)
            assert process.returncode == 0, output.decode()
        assert not ingest_workers_alive(first)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    run_until_idle(data_dir, ENV)
    acknowledged = {*clients.acknowledged, "slow"}
    assert len(acknowledged) == len(clients.acknowledged) + 1 >= 4_001
    counts, sequences = logged_ids(data_dir)
    # Every acknowledged event is in the log once; nothing was appended twice; each partition
    # numbered its events from 0 without a gap although two processes appended.
    lost = acknowledged - set(counts)
    assert not lost, f"{len(lost)} acknowledged events are not in the log, e.g. {min(lost)}"
    assert set(counts) <= {*clients.posted, "slow"}
    assert max(counts.values()) == 1
    for numbers in sequences.values():
        assert numbers == list(range(len(numbers)))
    telemetry, quarantine = store_contents(data_dir)
    stored = Counter(id_ for _, id_ in telemetry)
    assert acknowledged <= set(stored) and set(stored) == set(counts)
    assert max(stored.values()) == 1 and quarantine == []


def ingest_workers_alive(pids: set[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


async def test_workers_that_keep_failing_at_start_end_the_run_with_an_error(
    tmp_path: Path,
) -> None:
    settings = load_settings(embedded={"data_dir": tmp_path})
    async with ingest_in_workers(settings, 1, 0, [], CollectorRegistry(), lambda _: None) as pool:
        # A rate-buckets file that cannot be made: every worker fails as it starts.
        broken = IngestPool(
            dataclasses.replace(pool.spec, rates_path=Path("/dev/null/rates.db")),
            1,
            pool.metrics,
            pool.port,
            restart_backoff=Backoff(initial_s=0.01, max_s=0.01, jitter=False),
            max_failed_starts=2,
        )
        with pytest.raises(ExceptionGroup) as failed:
            await broken.run(asyncio.Event())
    (error,) = failed.value.exceptions
    assert isinstance(error, StreamError)
    assert "ingest workers keep exiting at start (2 in a row, last exit code 1)" in str(error)
