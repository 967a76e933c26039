"""Replay throughput beside live processing, on the same events, in the same run.

Run: ``python -m bench.replay [--events N] [--repeats R]``. Every configuration runs the real
command (``evalstream process --until-idle``, ``evalstream replay``) on a fresh copy of the
same data dir: the simulated events appended to the embedded log by ``evalstream send``, and
the same events as an NDJSON file; the store starts empty each time, so every run writes the
same documents. Configurations are interleaved (their order rotates between repeats) and each
runs on N events and on a small input: the cost per event is the difference divided by the
difference in events, so the interpreter's start-up and the processor's idle wait at the end
cancel out. Reference: ``orjson.loads`` of the same bytes, measured between runs. Results:
medians, written to bench/results/replay.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from stream.producers.simulator import Simulator
from stream.sources.local_log import item_partition

RESULTS = Path(__file__).parent / "results" / "replay.md"
# The small run each configuration's cost is measured against. Big enough (~3.6 MB as NDJSON)
# that a reprocess job with default workers reads the single file in two parts as it does the
# big one: with 500 events (under a MiB) the small file was read whole in the command's
# process, so the big run's worker start-up did not cancel out and counted against the file.
SMALL = 3000
# The bench log's partitions: the simulated events are spread over them. 4, the embedded default
# until 2026-12-06 (now 8), as in the recorded results; the commands use the log's own count.
PARTITIONS = 4
# Every command runs with its defaults, but for one row: the replay with the processor's batch
# size (replay.batch_size is bigger), to show what that default is worth.
PROCESSOR_BATCH = {"EVALSTREAM_REPLAY__BATCH_SIZE": "1000"}


# A configuration's reference: the processor with the same detectors setting and workers.
STORE_ONLY, DETECTORS_ON = "store only", "detectors on"
ONE, DEFAULT = "1 worker", "default workers"


Config = tuple[list[str], tuple[str, str], dict[str, str]]


def configurations(window: list[str]) -> dict[str, Config]:
    """Name -> (command arguments after ``evalstream``, with ``{data}``, ``{ndjson}`` and
    ``{ndjson4}`` filled in; the processor configuration it compares with; settings in the
    environment). Per process (``--workers 1`` for both commands), and as shipped (both
    commands' default: one worker process per core)."""
    process = ["process", "--data-dir", "{data}", "--no-ingest", "--until-idle", "0.3"]
    sources = {"log": [], "NDJSON": ["{ndjson}"], "NDJSON ×4 files": ["{ndjson4}"]}
    modes = {"reprocess": "reprocess", "shadow": "shadow", "reprocess + shadow": "both"}
    one_process = [
        ("log", "reprocess"), ("NDJSON", "reprocess"), ("NDJSON ×4 files", "reprocess"),
        ("log", "shadow"), ("NDJSON", "shadow"), ("NDJSON ×4 files", "shadow"),
        ("log", "reprocess + shadow"), ("NDJSON", "reprocess + shadow"),
    ]  # fmt: skip
    # As shipped: the log, files (a reprocess job cuts one big file in parts; detection reads
    # a file whole, in one process).
    as_shipped = [
        ("log", "reprocess"), ("NDJSON", "reprocess"), ("NDJSON ×4 files", "reprocess"),
        ("log", "shadow"), ("log", "reprocess + shadow"),
    ]  # fmt: skip
    configs: dict[str, Config] = {}
    for workers, rows in ((ONE, one_process), (DEFAULT, as_shipped)):
        flag = ["--workers", "1"] if workers == ONE else []
        suffix = "" if workers == ONE else ", default workers"
        for detectors in (STORE_ONLY, DETECTORS_ON):
            kind = (detectors, workers)
            configs[f"process, {detectors}{suffix}"] = ([*process, *flag], kind, {})
            for source, mode in rows:
                if (mode == "reprocess") != (detectors == STORE_ONLY):
                    continue
                args = ["replay", *sources[source], "--data-dir", "{data}", "--mode", modes[mode]]
                command = [*args, *flag, *window]
                configs[f"replay {source}, {mode}{suffix}"] = (command, kind, {})
                if (source, mode, workers) == ("NDJSON", "reprocess", ONE):
                    name = f"replay {source}, {mode}, batch 1000 (the processor's)"
                    configs[name] = (command, kind, PROCESSOR_BATCH)
    return configs


def prepare(root: Path, count: int) -> Path:
    """A data dir holding ``count`` simulated events in its log, and them as NDJSON beside:
    in one file, and in one file per log partition (the log's four streams, as four files)."""
    simulator = Simulator(
        apps=20, rate=200.0, seed=42, start=datetime.now(UTC) - timedelta(hours=2)
    )
    template = root / f"template-{count}"
    ndjson = template.with_suffix(".ndjson")
    events = list(simulator.events(count))
    ndjson.write_bytes(b"\n".join(event.body for event in events) + b"\n")
    for part in range(PARTITIONS):
        kept = [e.body for e in events if item_partition(e.app_id, e.body, PARTITIONS) == part]
        split_file(template, part).write_bytes(b"\n".join(kept) + b"\n")
    subprocess.run(
        [sys.executable, "-m", "evalstream", "send", str(ndjson), "--data-dir", str(template)],
        check=True,
        capture_output=True,
    )
    return template


def split_file(template: Path, part: int) -> Path:
    return template.parent / f"{template.name}-part{part}.ndjson"


def one_run(
    args: list[str], detectors: bool, template: Path, scratch: Path, settings: dict[str, str]
) -> tuple[float, float]:
    """(wall s, CPU s of the command) of one run on a fresh copy of ``template`` and of its
    NDJSON file. The file is copied too, so that the replay finds it in the page cache as the
    processor finds the log copied with it: left in place, it was no longer there after a
    while (the first read of a 24 MB file took 0.35 s wall for 0.016 s CPU, the next 0.03 s),
    and the NDJSON replays paid a disk read the others did not."""
    data = scratch / "data"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(template, data)
    ndjson = shutil.copyfile(template.with_suffix(".ndjson"), scratch / "events.ndjson")
    for part in range(PARTITIONS):
        shutil.copyfile(split_file(template, part), scratch / f"events-part{part}.ndjson")
    ndjson4 = str(scratch / "events-part*.ndjson")
    fills = {"{data}": str(data), "{ndjson}": str(ndjson), "{ndjson4}": ndjson4}
    filled = [functools.reduce(lambda a, kv: a.replace(*kv), fills.items(), arg) for arg in args]
    env = {**os.environ, **settings, "EVALSTREAM_PROCESSOR__HOT_PATH": str(detectors).lower()}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "evalstream", *filled], env=env, check=True, capture_output=True
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def reference(ndjson: Path) -> float:
    """CPU µs per event of ``orjson.loads`` over the same lines (best of 3 passes)."""
    lines = ndjson.read_bytes().splitlines()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for line in lines:
            orjson.loads(line)
        best = min(best, time.process_time() - start)
    return best / len(lines) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="Do not update the results file.")
    args = parser.parse_args()
    window = [
        "--from", (datetime.now(UTC) - timedelta(days=1)).isoformat(),
        "--to", (datetime.now(UTC) + timedelta(days=1)).isoformat(),
    ]  # fmt: skip
    configs = configurations(window)
    names = list(configs)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    loads: list[str] = []
    orjson_us: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        root = Path(tmp)
        large, small = prepare(root, args.events), prepare(root, SMALL)
        extra = args.events - SMALL
        for repeat in range(args.repeats):
            order = names[repeat % len(names) :] + names[: repeat % len(names)]
            loads.append(" ".join(f"{value:.2f}" for value in os.getloadavg()))
            orjson_us.append(reference(large.with_suffix(".ndjson")))
            for name in order:
                command, (detectors, _), settings = configs[name]
                on = detectors == DETECTORS_ON
                wall_large, cpu_large = one_run(command, on, large, root, settings)
                wall_small, cpu_small = one_run(command, on, small, root, settings)
                runs[name].append(
                    (
                        extra / max(wall_large - wall_small, 1e-9),
                        (cpu_large - cpu_small) / extra * 1e6,
                    )
                )
    ref = statistics.median(orjson_us)
    # The processor's medians per (detectors, workers), what each configuration compares with.
    process_rate, process_cpu = {}, {}
    for name, (command, kind, _) in configs.items():
        if command[0] == "process":
            process_rate[kind] = statistics.median(r for r, _ in runs[name])
            process_cpu[kind] = statistics.median(c for _, c in runs[name])
    lines = [
        "# Replay throughput beside live processing",
        "",
        f"Command: `python -m bench.replay --events {args.events} --repeats {args.repeats}`",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}, shared 2-core box; load average (1/5/15 min) "
        f"before each repeat: {'; '.join(loads)}.",
        f"Events: {args.events:,} simulated (20 apps, 4 partitions) minus a {SMALL}-event run "
        "of the same command (start-up, idle wait and report cancel out); medians of "
        f"{args.repeats} interleaved repeats.",
        f"Reference `orjson.loads` of the same lines: {ref:.2f} µs/event CPU.",
        "",
        "| configuration | events/s (wall) | × process | CPU µs/event | CPU × process "
        "| × orjson | runs (events/s) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        rate = statistics.median(r for r, _ in runs[name])
        cpu = statistics.median(c for _, c in runs[name])
        kind = configs[name][1]
        live, live_cpu = process_rate[kind], process_cpu[kind]
        each = ", ".join(f"{r:,.0f}" for r, _ in runs[name])
        lines.append(
            f"| {name} | {rate:,.0f} | {rate / live:.2f} | {cpu:.1f} | {cpu / live_cpu:.2f} "
            f"| {cpu / ref:.1f} | {each} |"
        )
    lines += [
        "",
        "× process: against `evalstream process` with the same detectors setting (store "
        "only, or detectors on for the runs with shadow detection) and the same workers: "
        "`--workers 1` for both commands (per process), or neither given (as shipped: one "
        "worker process per core, at most one per partition, for both), events/s and CPU per "
        "event. "
        "Shadow detection from the log and from one file runs the detectors while reading, a "
        "state per partition as the live hot path; from several files it does more: it keeps "
        "what the detectors read in the job and runs them per app in event-time order after "
        "reading. NDJSON ×4 files: the same events in one file per log partition (by app, as "
        "the log spreads them), so a replay reads four streams concurrently as the processor "
        "reads the log's four partitions; a single file is one stream, read and written batch "
        "after batch, except with default workers in reprocess mode: then the job reads it in "
        "a part per worker, by app (each worker reads the file and keeps its apps' lines; "
        "whole when one app is most of the file, not the case here). Both commands run "
        "with their default batch sizes: the replay's (replay.batch_size, 4,000 events, a store "
        "transaction each) is bigger than the processor's (1,000, which bounds alert latency); "
        'the row "batch 1000" is the one-file replay with the processor\'s.',
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
