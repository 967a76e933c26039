"""Bounded memory of the cold path: peak RSS growth while one app's window of a million
stored documents is evaluated with the built-in metrics.

Run ``python -m bench.coldpath_memory`` (``--documents``, ``--reference``, ``--repeats``;
``--data-dir`` keeps the generated store for later runs; ``--out PATH`` for the report,
bench/results/coldpath_memory.md by default). The window (and a smaller reference window, the
hour before, for drift) is written into the embedded SQLite store first, outside any figure.
Each repeat then starts a fresh child process that imports everything and opens the stores,
takes its RSS as the baseline, and runs the real ``ShardRunner`` over one unit (the default
``quality`` policy with a price table: latency, errors, usage/cost, scores, drift). Peak RSS
is the kernel's high-water mark (``VmHWM``, reset to the baseline through
``/proc/self/clear_refs`` when the kernel allows it) and, as a cross-check, the largest of
``VmRSS`` samples taken every 10 ms by a thread.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
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

from bench.coldpath_data import (
    REFERENCE,
    WINDOW,
    bench_policy,
    check_readable,
    document_pool,
    fill,
    settings_for,
    write_config,
)
from coldpath.shards import build_manifest
from evalstream import wiring

APP = "app-bench"
TARGET_MIB = 200.0


def status_kib(field: str) -> int:
    """A ``/proc/self/status`` figure in KiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False when not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class Sampler(threading.Thread):
    """The largest VmRSS seen, sampled every ``interval_s``."""

    def __init__(self, interval_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kib = max(self.peak_kib, status_kib("VmRSS"))
            self.stop.wait(self.interval_s)


async def evaluate(data_dir: Path, config: Path, page_size: int, run: int) -> dict[str, Any]:
    settings = settings_for(data_dir, config, page_size)
    policy = settings.coldpath.policies[0]
    manifest = build_manifest(WINDOW, [policy], [APP], group_size=1, code_version="bench", run=run)
    async with wiring.shard_runner(settings) as runner:
        gc.collect()
        baseline = status_kib("VmRSS")
        reset = reset_peak()
        sampler = Sampler()
        sampler.start()
        wall, cpu = time.perf_counter(), time.process_time()
        outcomes = await runner.run_shard(manifest, 0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        sampler.stop.set()
        sampler.join()
    hwm = status_kib("VmHWM")
    results = {result.metric: result for result in outcomes[0].results}
    return {
        "baseline_kib": baseline,
        "hwm_kib": hwm,
        "hwm_reset": reset,
        "sampled_peak_kib": sampler.peak_kib,
        "wall_s": wall,
        "cpu_s": cpu,
        "documents": int(results["errors"].values["count"] or 0),
        "reference_documents": results["drift"].details["sizes"]["latency_ms"]["reference"],
        "latency_exact": results["latency"].details["exact"],
        "p95": results["latency"].values["p95"],
        "statuses": {name: result.status for name, result in results.items()},
    }


def child(args: argparse.Namespace) -> None:
    found = asyncio.run(evaluate(args.data_dir, args.config, args.page_size, args.run))
    sys.stdout.write(json.dumps(found) + "\n")


def prepare(data_dir: Path, documents: int, reference: int, pool_size: int) -> str:
    """Write the window and the reference window unless ``data_dir`` holds them already."""
    marker = data_dir / "coldpath_memory.json"
    wanted = {"documents": documents, "reference": reference, "pool": pool_size}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return "reused"
    store = data_dir / "store.db"
    for leftover in data_dir.glob("*.db*"):
        leftover.unlink()
    began = time.perf_counter()
    pool = document_pool(pool_size, seed=11)
    ref = fill(store, pool, APP, REFERENCE, reference, seed=1)
    window = fill(store, pool, APP, WINDOW, documents, seed=2)
    check_readable(store, APP, WINDOW)
    marker.write_text(json.dumps(wanted))
    size = store.stat().st_size
    return (
        f"generated in {time.perf_counter() - began:.0f} s: {window.documents:,} + "
        f"{ref.documents:,} documents, mean {window.bytes / window.documents:,.0f} bytes of "
        f"JSON, store file {size / 2**30:.2f} GiB"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--reference", type=int, default=100_000)
    parser.add_argument("--pool", type=int, default=5_000, help="distinct simulated documents")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--data-dir", type=Path, help="keep (and reuse) the generated store")
    parser.add_argument("--out", type=Path, default=Path("bench/results/coldpath_memory.md"))
    parser.add_argument("--no-write", action="store_true", help="Do not write the report.")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return

    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data_dir or Path(folder)
        data_dir.mkdir(parents=True, exist_ok=True)
        generation = prepare(data_dir, args.documents, args.reference, args.pool)
        config = write_config(Path(folder) / "evalstream.toml", [bench_policy()])
        runs = []
        for repeat in range(args.repeats):
            command = [
                sys.executable, "-m", "bench.coldpath_memory", "--child",
                "--data-dir", str(data_dir), "--config", str(config),
                "--page-size", str(args.page_size),
                # A new run number per repeat and per invocation: every unit is evaluated.
                "--run", str(int(time.time()) * 100 + repeat),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, check=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"run {repeat + 1}: {runs[-1]}", file=sys.stderr)
    text = report(args, runs, generation)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


def growth_mib(run: dict[str, Any]) -> float:
    peak = run["hwm_kib"] if run["hwm_reset"] else run["sampled_peak_kib"]
    return float(peak - run["baseline_kib"]) / 1024


def report(args: argparse.Namespace, runs: list[dict[str, Any]], generation: str) -> str:
    growths = [growth_mib(run) for run in runs]
    median = statistics.median(growths)
    docs = runs[0]["documents"] + runs[0]["reference_documents"]
    verdict = "met" if median < TARGET_MIB else "NOT met"
    lines = [
        "# Cold path memory: one window of one app",
        "",
        f"Command: `python -m bench.coldpath_memory --documents {args.documents} "
        f"--reference {args.reference} --repeats {args.repeats} --page-size {args.page_size}` "
        f"— {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, 2 shared cores.",
        f"Store: embedded SQLite, {generation}.",
        "",
        f"Each run is a fresh process evaluating app `{APP}` over {WINDOW.key} "
        f"({int(runs[0]['documents']):,} documents) with drift against the hour before "
        f"({runs[0]['reference_documents']:,} documents) through `ShardRunner.run_shard`: "
        "the default `quality` policy (latency, errors, usage with a price table, scores, "
        f"drift), pages of {args.page_size}. Baseline RSS is taken after imports and after "
        "opening the stores, before the first page; the peak is the kernel's VmHWM reset to "
        "the baseline (`/proc/self/clear_refs`), cross-checked by 10 ms VmRSS samples.",
        "",
        "| run | baseline RSS MiB | peak RSS MiB (VmHWM) | sampled peak MiB | growth MiB "
        "| wall s | CPU s | CPU µs/doc | latency exact |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, (run, growth) in enumerate(zip(runs, growths, strict=True), 1):
        lines.append(
            f"| {index} | {run['baseline_kib'] / 1024:.1f} | {run['hwm_kib'] / 1024:.1f}"
            f"{'' if run['hwm_reset'] else ' (not reset)'} | "
            f"{run['sampled_peak_kib'] / 1024:.1f} | {growth:+.1f} | {run['wall_s']:.1f} | "
            f"{run['cpu_s']:.1f} | {run['cpu_s'] / docs * 1e6:.1f} | {run['latency_exact']} |"
        )
    lines += [
        "",
        f"**Median peak RSS growth: {median:.1f} MiB** (target < {TARGET_MIB:.0f} MB: "
        f"{verdict}). p95 latency {runs[0]['p95']:.1f} ms; statuses "
        + ", ".join(f"{k}: {v}" for k, v in sorted(runs[0]["statuses"].items()))
        + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
