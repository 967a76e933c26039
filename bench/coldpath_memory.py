"""Memory of the cold path on one large window: peak RSS growth while the shard runner
evaluates ≥ 1,000,000 stored documents of one app with the built-in metrics.

Run ``python -m bench.coldpath_memory`` (``--documents``, ``--reference``, ``--repeats``;
``--data PATH`` keeps the generated store for later runs; ``--out PATH`` for the report,
bench/results/coldpath_memory.md by default). The store is built first (simulator documents
bulk-inserted, see ``bench.coldpath_data``), outside every measurement. Each repeat is a fresh
child process that imports everything, collects garbage, reads its RSS (the baseline), resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``), then runs the real ``ShardRunner`` over
one unit (latency, errors, usage, scores and drift against the previous window) and reads the
peak (``VmHWM``). Growth = peak − baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.coldpath_data import NullPublisher, StoreShape, ensure_store, manifest
from coldpath.policies.catalogue import CATALOGUE
from coldpath.runner import DEFAULT_PAGE_SIZE, ShardRunner
from schemas import AppDirectory
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore

RESULTS = Path(__file__).parent / "results" / "coldpath_memory.md"
TARGET_MB = 200.0
MIB = 1024 * 1024


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux ≥ 4.0); False if refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def evaluate(data: Path, evaluations_path: Path, page_size: int) -> dict[str, Any]:
    """One unit through the shard runner; a few of its values, to show what was computed."""
    async with (
        SqliteStore(data) as telemetry,
        SqliteEvaluationStore(evaluations_path) as evaluations,
    ):
        runner = ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=NullPublisher(),
            catalogue=CATALOGUE,
            apps=AppDirectory(),
            page_size=page_size,
        )
        (outcome,) = await runner.run_shard(manifest(1, 1), 0)
    by_metric = {result.metric: result for result in outcome.results}
    latency, drift = by_metric["latency"], by_metric["drift"]
    return {
        "documents": latency.values["count"],
        "p95_ms": latency.values["p95"],
        "latency_exact": latency.details["exact"],
        "psi_latency": drift.values["psi.latency_ms"],
        "statuses": {name: result.status for name, result in sorted(by_metric.items())},
    }


def child(data: Path, page_size: int) -> dict[str, Any]:
    """Runs in the measured process: baseline after imports, then evaluate, then the peak."""
    with tempfile.TemporaryDirectory() as folder:
        gc.collect()
        baseline = status_bytes("VmRSS")
        peak_before = status_bytes("VmHWM")
        reset = reset_peak()
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.5):
                samples.append(status_bytes("VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        wall, cpu = time.perf_counter(), time.process_time()
        found = asyncio.run(evaluate(data, Path(folder) / "evaluations.db", page_size))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        stop.set()
        sampler.join()
        peak = status_bytes("VmHWM")
    return {
        **found,
        "baseline_mib": baseline / MIB,
        "peak_mib": peak / MIB,
        "growth_mib": (peak - baseline) / MIB if reset else (peak - max(baseline, peak_before)),
        "peak_reset": reset,
        "import_peak_mib": peak_before / MIB,
        "rss_samples_mib": [round(value / MIB, 1) for value in samples],
        "wall_s": wall,
        "cpu_s": cpu,
    }


def run_child(data: Path, page_size: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.coldpath_memory", "--child", "--data", str(data)]
    argv += ["--page-size", str(page_size)]
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def report(args: argparse.Namespace, runs: list[dict[str, Any]], build_s: float | None) -> str:
    growth = statistics.median(run["growth_mib"] for run in runs)
    first = runs[0]
    built = f"built in {build_s:.0f} s" if build_s is not None else "kept from an earlier run"
    lines = [
        "# Cold path memory on one large window",
        "",
        f"Command: `python -m bench.coldpath_memory --documents {args.documents} "
        f"--reference {args.reference} --repeats {args.repeats}` — "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, 2 shared cores.",
        "",
        f"One app: {args.documents:,} documents in the evaluated hour and {args.reference:,} in "
        f"the hour before (the drift reference), simulator documents of ~1.7 KB in the "
        f"embedded SQLite store (store {built}). Each run is a fresh process evaluating the "
        f"unit with the shard runner (page size {args.page_size}): latency, errors, usage, "
        "scores, drift (PSI/KS on latency, JS on model_version). Baseline = RSS after imports "
        "and `gc.collect()`; peak = `VmHWM` after resetting it at the baseline; growth = peak − "
        "baseline. (`ru_maxrss` is not used: Linux carries it over `execve`, so a child "
        "reports its parent's peak.)",
        "",
        "| run | load (1 min) | baseline MiB | peak MiB | growth MiB | peak of imports MiB "
        "| wall s | CPU s | µs/doc CPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    total = args.documents + args.reference
    for index, run in enumerate(runs, 1):
        lines.append(
            f"| {index} | {run['load']:.2f} | {run['baseline_mib']:.1f} | {run['peak_mib']:.1f} "
            f"| {run['growth_mib']:.1f} | {run['import_peak_mib']:.1f} | {run['wall_s']:.1f} | "
            f"{run['cpu_s']:.1f} | {run['cpu_s'] / total * 1e6:.1f} |"
        )
    verdict = "met" if growth < TARGET_MB else "NOT met"
    lines += [
        "",
        f"**Median peak growth: {growth:.1f} MiB** (target < {TARGET_MB:.0f} MB: {verdict}).",
        "",
        f"What was computed (run 1): {int(first['documents']):,} latencies, p95 "
        f"{first['p95_ms']:.1f} ms (exact: {first['latency_exact']}), PSI of latency "
        f"{first['psi_latency']:.4f}; statuses {first['statuses']}.",
        "",
        "RSS sampled every 0.5 s in run 1 (MiB): "
        + ", ".join(f"{value:.0f}" for value in first["rss_samples_mib"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--data", type=Path, help="store file to build or reuse (kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="Do not write the report.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.data, args.page_size)))
        return

    with tempfile.TemporaryDirectory() as folder:
        data = args.data or Path(folder) / "store.db"
        began = time.perf_counter()
        built = ensure_store(data, StoreShape(1, args.documents, args.reference))
        build_s = time.perf_counter() - began if built else None
        runs = []
        for _ in range(args.repeats):
            load = os.getloadavg()[0]
            runs.append({**run_child(data, args.page_size), "load": load})
            # Each run as it ends: a long run cut short still leaves its figures in the log.
            print(json.dumps(runs[-1]), flush=True)
        text = report(args, runs, build_s)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
