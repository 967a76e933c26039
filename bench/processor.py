"""Processor benchmark on the embedded backend: CPU per event beside a floor, a peer and orjson.

Run: ``python -m bench.processor [--events N] [--repeats R]``. Every configuration processes
the same simulated ~1.2 KB events in a child process of its own, timed the same way
(bench/processor_subjects.py): ``orjson.loads`` (DESIGN.md's reference), the hand-written
floor (validate, id, SQLite upsert) with and without river detectors, the Bytewax + river peer
in a virtual environment the bench makes (bench/processor_peer.py; skipped, with the reason
written down, when it cannot be installed), and ``evalstream`` with the hot path off and on.
Configurations are interleaved (their order rotates between repeats); results are medians,
written to bench/results/processor.md with the load measured around each repeat. The stage
costs below the table are measured alone, in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bench.processor_subjects import PARTITIONS
from common.sqlite import sqlite3
from schemas import AppDirectory
from store.sqlite import SqliteStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.producers.simulator import Simulator

RESULTS = Path(__file__).parent / "results" / "processor.md"


def make_bodies(count: int) -> list[tuple[str | None, bytes]]:
    simulator = Simulator(
        apps=20, rate=200.0, seed=42, start=datetime.now(UTC) - timedelta(hours=2)
    )
    return [(event.app_id, event.body) for event in simulator.events(count)]


def per_event(seconds: list[float], count: int) -> float:
    return statistics.median(seconds) / count * 1e6


def components(bodies: list[bytes], repeats: int) -> dict[str, float]:
    """Median CPU µs per event of each pipeline stage, measured alone."""
    now = datetime.now(UTC)
    decoder = Decoder()
    enricher = Enricher(AppDirectory(), b"k", "local")
    position = ReceivedEvent(b"", "0", 0, now, "0")
    events = [accepted.event for body in bodies for accepted in decoder.decode(body, now).accepted]
    documents = [enricher.document(event, position, 0, now, False) for event in events]
    timings: dict[str, list[float]] = {"decode+validate": [], "enrich": [], "store upsert": []}

    async def store_all(store: SqliteStore) -> None:
        for offset in range(0, len(documents), 1000):
            await store.write(documents[offset : offset + 1000], [])
        await store.close()

    for _ in range(repeats):
        start = time.process_time()
        for body in bodies:
            decoder.decode(body, now)
        timings["decode+validate"].append(time.process_time() - start)
        start = time.process_time()
        for event in events:
            enricher.document(event, position, 0, now, False)
        timings["enrich"].append(time.process_time() - start)
        with tempfile.TemporaryDirectory() as folder:
            store = SqliteStore(Path(folder) / "store.db")
            # Closing checkpoints the WAL into the file: part of what the writes cost.
            start = time.process_time()
            asyncio.run(store_all(store))
            timings["store upsert"].append(time.process_time() - start)
    return {name: per_event(values, len(bodies)) for name, values in timings.items()}


def reference(bodies: list[bytes], repeats: int) -> float:
    """Median CPU µs per event of ``orjson.loads`` (CPU time, like the pipeline's figure:
    wall time would charge other processes on the shared machine to the reference)."""
    seconds = []
    for _ in range(repeats):
        start = time.process_time()
        for body in bodies:
            orjson.loads(body)
        seconds.append(time.process_time() - start)
    return per_event(seconds, len(bodies))


PEER_VENV = Path(tempfile.gettempdir()) / "evalstream-bench-peer"
PEER_PACKAGES = ["bytewax==0.21.1", "river==0.26.1"]
# Issue 15's targets for evalstream with the hot path on, per event: no more CPU than the
# floor without detectors, and at most this many times orjson.loads.
TARGET_FLOOR = 1.0
TARGET_ORJSON = 15.0

SUBJECTS = {
    "orjson.loads": "orjson",
    "floor: validate + id + SQLite upsert": "floor",
    "floor + river ADWIN and PageHinkley on latency": "floor-river",
    "peer: Bytewax 0.21.1 + river": "peer",
    "evalstream process, hot path off": "evalstream",
    "evalstream process, hot path on": "evalstream-hot",
}


def peer_python() -> tuple[Path | None, str]:
    """The peer environment's interpreter (made once, kept between runs), or why not."""
    python = PEER_VENV / "bin" / "python"
    from importlib.metadata import version

    # The peer's SQLite sink writes through the same SQLite library as the floor and evalstream.
    same = ("pydantic", "orjson", "pysqlite3")
    wanted = [*PEER_PACKAGES, *(f"{name}=={version(name)}" for name in same)]
    marker = PEER_VENV / "installed.txt"
    if marker.exists() and marker.read_text() == "\n".join(wanted):
        return python, ""
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--clear", str(PEER_VENV)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *wanted],
            check=True,
            capture_output=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        reason = detail.decode(errors="replace").strip().splitlines()[-1:] or [str(exc)]
        return None, f"peer skipped: installing {' '.join(PEER_PACKAGES)} failed: {reason[0]}"
    marker.write_text("\n".join(wanted))
    return python, ""


def run_subject(kind: str, events_file: Path, peer: Path | None) -> tuple[float, float]:
    """(CPU s, wall s) of one configuration's processing window, from its child process."""
    root = Path(__file__).resolve().parent.parent
    if kind == "peer":
        assert peer is not None
        command = [str(peer), "-m", "bench.processor_peer", str(events_file)]
    else:
        command = [sys.executable, "-m", "bench.processor_subjects", kind, str(events_file)]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, check=True, capture_output=True, env=env, cwd=root)
    result = orjson.loads(done.stdout.splitlines()[-1])
    return result["cpu_s"], result["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-peer", action="store_true", help="Leave the Bytewax peer out.")
    parser.add_argument("--no-write", action="store_true", help="Do not update the results file.")
    args = parser.parse_args()

    pairs = make_bodies(args.events)
    bodies = [body for _, body in pairs]
    size = statistics.mean(len(body) for body in bodies)
    peer, skipped = (None, "peer left out (--no-peer)") if args.no_peer else peer_python()
    names = [name for name, kind in SUBJECTS.items() if kind != "peer" or peer is not None]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    loads: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-processor-") as folder:
        events_file = Path(folder) / "events.ndjson"
        events_file.write_bytes(b"\n".join(bodies) + b"\n")
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            before = os.getloadavg()[0]
            for name in order:
                cpu, wall = run_subject(SUBJECTS[name], events_file, peer)
                runs[name].append((cpu / len(bodies) * 1e6, len(bodies) / wall))
            loads.append(f"{before:.2f} → {os.getloadavg()[0]:.2f}")
    parts = components(bodies[:20_000], 3)
    cpu_us = {name: statistics.median(c for c, _ in values) for name, values in runs.items()}
    ref = cpu_us["orjson.loads"]
    floor_us = cpu_us["floor: validate + id + SQLite upsert"]

    lines = [
        "# Processor benchmark (embedded backend)",
        "",
        f"Command: `python -m bench.processor --events {args.events} --repeats {args.repeats}"
        + (" --no-peer`" if args.no_peer else "`"),
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} "
        "cores; 1-minute load average "
        f"before → after each repeat: {'; '.join(loads)}.",
        f"Events: {args.events:,} simulated, mean {size:,.0f} bytes, 20 apps, {PARTITIONS} "
        "partitions. Each configuration in its own child process, timed from its first event to "
        "its last durable write (set-up excluded, the same for all); CPU of the whole process; "
        "medians "
        f"of {args.repeats} interleaved repeats.",
        *([f"Note: {skipped}."] if skipped else []),
        "",
        "| configuration | CPU µs/event | × floor | × orjson | events/s per core "
        "| events/s (wall) | runs (CPU µs/event) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        cpu = cpu_us[name]
        wall_rate = statistics.median(r for _, r in runs[name])
        each = ", ".join(f"{c:.1f}" for c, _ in runs[name])
        lines.append(
            f"| {name} | {cpu:.1f} | {cpu / floor_us:.2f} | {cpu / ref:.1f} | {1e6 / cpu:,.0f} "
            f"| {wall_rate:,.0f} | {each} |"
        )
    hot = cpu_us["evalstream process, hot path on"]
    lines += [
        "",
        f"Targets (issue 15): evalstream with the hot path on ≤ {TARGET_FLOOR:.1f}× the floor "
        f"and ≤ {TARGET_ORJSON:.0f}× `orjson.loads`: {hot / floor_us:.2f}× the floor, "
        f"{hot / ref:.1f}× orjson — "
        + (
            "**met**."
            if hot / floor_us <= TARGET_FLOOR and hot / ref <= TARGET_ORJSON
            else "**not met**."
        ),
    ]
    lines += ["", "Where the time goes (each stage alone, in this process, median CPU µs/event):"]
    lines += [""] + [
        f"- {name}: {value:.2f} µs ({value / ref:.1f} × orjson)" for name, value in parts.items()
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
