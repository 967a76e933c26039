"""Cold-path throughput: evaluating a stored window against reading it, against the pandas
script an analyst would write, and the local executor on 1 worker against 2.

Run ``python -m bench.coldpath`` (``--documents``, ``--reference``, ``--repeats``; ``--apps``
and ``--per-app`` size the executor part, ``--skip-executor`` leaves it out). Everything is
generated into a temporary embedded store first (bench/coldpath_data.py), outside any figure.
Per repeat, interleaved, over the same app's window plus its reference window (the hour
before, which drift compares against), each in CPU time of this process:

* floor — the store's own reader, ``telemetry_window`` page by page, nothing computed;
* evaluation — ``ShardRunner.run_unit`` over the unit: the same reads plus the built-in
  metrics of the default ``quality`` policy (latency, errors, usage with a price table,
  scores, drift), results upserted;
* pandas — ``pandas_metrics``: rows read into a DataFrame (as ``pandas.read_sql`` does), JSON
  flattened with ``json_normalize``, the same values computed vectorised (and checked against
  the evaluation's).

Then the local executor runs one manifest of ``--apps`` apps × 2 policies with ``workers=1``
and ``workers=2``, alternating, in wall time (each shard is a process). Results: medians,
written to bench/results/coldpath.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.coldpath_data import (
    PRICES,
    REFERENCE,
    WINDOW,
    bench_policy,
    check_readable,
    document_pool,
    fill,
    settings_for,
    write_config,
)
from coldpath.executors.local import LocalExecutor
from coldpath.shards import build_manifest
from coldpath.trigger import WindowChoice, plan
from common.sqlite import sqlite3
from evalstream import wiring
from evalstream.settings import Settings
from schemas import EvaluationPolicy, MetricSpec, Window
from store.ports import window_days
from store.sqlite import SqliteStore

RESULTS = Path(__file__).parent / "results" / "coldpath.md"
APP = "app-bench"
SLO_MS = 2000.0  # the default app's latency_threshold_ms
BAR = 0.5  # the scores metric's default bar
PSI_BINS = 10
PSI_FLOOR = 1e-4


# --- (a) the floor --------------------------------------------------------------------------


async def read_only(path: Path, page_size: int) -> int:
    """Read the reference window and the window through the store; compute nothing."""
    count = 0
    async with SqliteStore(path) as store:
        for window in (REFERENCE, WINDOW):
            async for page in store.telemetry_window([APP], window.start, window.end, page_size):
                count += len(page)
    return count


# --- (b) the evaluation ---------------------------------------------------------------------


async def evaluate(settings: Settings, run: int) -> dict[str, dict[str, Any]]:
    """One unit through the shard runner; the values of each metric by name."""
    policy = settings.coldpath.policies[0]
    manifest = build_manifest(WINDOW, [policy], [APP], group_size=1, code_version="bench", run=run)
    async with wiring.shard_runner(settings) as runner:
        outcome = await runner.run_unit(manifest, manifest.units[0])
    return {result.metric: dict(result.values) for result in outcome.results}


# --- (c) the pandas script ------------------------------------------------------------------


def load_frame(connection: sqlite3.Connection, window: Window) -> pd.DataFrame:
    # What pandas.read_sql does for a SQLite connection (it warns about any but the standard
    # library's, which evalstream does not use: common/sqlite.py).
    # By the store's key, as the store reads a window: the app's pk of each day.
    docs = [
        row
        for day in window_days(window.start, window.end)
        for row in connection.execute(
            "SELECT doc FROM telemetry WHERE pk = ? AND ts >= ? AND ts < ?",
            (f"{APP}:{day.isoformat()}", window.start.timestamp(), window.end.timestamp()),
        )
    ]
    rows = pd.DataFrame.from_records(docs, columns=["doc"])
    return pd.json_normalize(rows["doc"].map(json.loads).tolist())


def numeric_signals(frame: pd.DataFrame) -> dict[str, pd.Series]:
    signals = {
        "latency_ms": frame["latency_ms"],
        "output_chars": frame["derived.output_chars"].where(frame["output_text"].notna()),
        "tokens_total": frame["tokens.input"] + frame["tokens.output"],
    }
    for column in sorted(c for c in frame.columns if c.startswith("scores.")):
        signals[f"score.{column.removeprefix('scores.')}"] = frame[column]
    return {name: series.dropna().to_numpy(dtype=np.float64) for name, series in signals.items()}


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    edges = np.unique(np.quantile(reference, np.arange(1, PSI_BINS) / PSI_BINS))
    r = np.bincount(np.searchsorted(edges, reference), minlength=len(edges) + 1) / len(reference)
    c = np.bincount(np.searchsorted(edges, current), minlength=len(edges) + 1) / len(current)
    r, c = np.maximum(r, PSI_FLOOR), np.maximum(c, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def ks(reference: np.ndarray, current: np.ndarray) -> float:
    a, b = np.sort(reference), np.sort(current)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def js(reference: pd.Series, current: pd.Series) -> float:
    shares = pd.concat(
        [reference.fillna("<missing>").value_counts(normalize=True),
         current.fillna("<missing>").value_counts(normalize=True)],
        axis=1,
    ).fillna(0.0).to_numpy().T  # fmt: skip
    p, q = shares
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(kl_p / 2 + kl_q / 2)


def pandas_metrics(path: Path) -> dict[str, Any]:
    """What an analyst's notebook computes for the window (and drift against the hour
    before): the whole window in memory, every statistic vectorised."""
    connection = sqlite3.connect(path)
    try:
        frame = load_frame(connection, WINDOW)
        reference = load_frame(connection, REFERENCE)
    finally:
        connection.close()
    out: dict[str, Any] = {}

    latency = frame["latency_ms"].dropna()
    out["latency"] = {
        **latency.quantile([0.5, 0.9, 0.95, 0.99]).set_axis(["p50", "p90", "p95", "p99"]),
        "mean": latency.mean(),
        "slo_attainment": (latency <= SLO_MS).mean(),
    }

    failed = frame["status"].eq("error")
    by_type = frame.loc[failed, "error_type"].fillna("unspecified").value_counts() / len(frame)
    out["errors"] = {"rate": failed.mean(), **{f"rate.{k}": v for k, v in by_type.items()}}

    prices = pd.DataFrame.from_dict(PRICES, orient="index") / 1000.0
    used = frame.dropna(subset=["tokens.input"])
    cost = used["tokens.input"] * used["model_id"].map(prices["input_per_1k"]) + used[
        "tokens.output"
    ] * used["model_id"].map(prices["output_per_1k"])
    per_model = (
        used.assign(cost=cost).groupby("model_id")[["tokens.input", "tokens.output", "cost"]].sum()
    )
    out["usage"] = {
        "tokens_in_total": per_model["tokens.input"].sum(),
        "tokens_out_total": per_model["tokens.output"].sum(),
        "cost": per_model["cost"].sum(),
        "cost_per_request": cost.mean(),
        "per_model": per_model.to_dict(orient="index"),
    }

    scores = frame[[c for c in frame.columns if c.startswith("scores.")]]
    summary = pd.DataFrame(
        {
            "mean": scores.mean(),
            "p10": scores.quantile(0.1),
            "p50": scores.quantile(0.5),
            "below": scores.lt(BAR).sum() / scores.count(),
        }
    )
    out["scores"] = {
        f"{column.removeprefix('scores.')}.{stat}": value
        for column, row in summary.iterrows()
        for stat, value in row.items()
    }

    drift: dict[str, float] = {}
    before, now = numeric_signals(reference), numeric_signals(frame)
    for name in sorted(before.keys() & now.keys()):
        drift[f"psi.{name}"] = psi(before[name], now[name])
        drift[f"ks.{name}"] = ks(before[name], now[name])
    for field in ("model_version", "status"):
        drift[f"js.{field}"] = js(reference[field], frame[field])
    out["drift"] = drift
    return out


COMPARED = (
    ("latency", ("p50", "p95", "p99", "mean", "slo_attainment")),
    ("errors", ("rate",)),
    ("usage", ("tokens_in_total", "cost")),
    ("scores", ("groundedness.p10", "relevance.below")),
    ("drift", ("psi.latency_ms", "ks.latency_ms", "js.model_version", "ks.score.fluency")),
)


def differences(ours: dict[str, dict[str, Any]], theirs: dict[str, Any]) -> list[str]:
    """The checked values where the two disagree by more than 1e-9 relative."""
    found = []
    for metric, names in COMPARED:
        for name in names:
            a, b = ours[metric].get(name), theirs[metric].get(name)
            if a is None or b is None or abs(a - b) > 1e-9 * max(1.0, abs(a), abs(b)):
                found.append(f"{metric}.{name}: evaluation {a!r}, pandas {b!r}")
    return found


# --- (d) the executor -----------------------------------------------------------------------


def speed_policy() -> EvaluationPolicy:
    """A second, lighter policy: latency and errors only."""
    policy = bench_policy("speed")
    metrics = tuple(s for s in policy.metrics if s.metric in ("latency", "errors"))
    assert all(isinstance(s, MetricSpec) for s in metrics)
    return policy.model_copy(update={"metrics": metrics})


@dataclass(frozen=True)
class ExecutorRun:
    wall_s: float
    shard_cpu_s: float  # user + system CPU of the shard processes
    load: float  # the machine's 1-minute load average when the run ended
    units: int
    shards: int


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def run_executor(settings: Settings, workers: int) -> ExecutorRun:
    """A fresh run (new run number) of the window's manifest on the local executor."""
    async with wiring.evaluation_store(settings) as store:
        (manifest,) = await plan(
            settings.coldpath.policies,
            WindowChoice(last=False, window=WINDOW),
            store,
            now=datetime.now(UTC),
            group_size=settings.coldpath.group_size,
            code_version="bench",
            rerun=True,
        )
    executor = LocalExecutor(wiring.shard_command(settings), workers=workers)
    began, cpu = time.perf_counter(), children_cpu()
    report = await executor.run(manifest)
    wall, cpu = time.perf_counter() - began, children_cpu() - cpu
    if not report.ok:
        raise RuntimeError(f"shards failed: {report.failed}")
    return ExecutorRun(wall, cpu, os.getloadavg()[0], len(manifest.units), manifest.shard_count)


# --- the run --------------------------------------------------------------------------------


def cpu_of(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.process_time()
    found = call()
    return time.process_time() - start, found


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--reference", type=int, default=25_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=5_000, help="distinct simulated documents")
    parser.add_argument("--apps", type=int, default=48, help="apps of the executor's manifest")
    parser.add_argument("--per-app", type=int, default=3_000, help="documents per app window")
    parser.add_argument("--group-size", type=int, default=12, help="units per shard")
    parser.add_argument("--skip-executor", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="Do not write the report.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        began = time.perf_counter()
        pool = document_pool(args.pool, seed=11)
        one = root / "one"
        one.mkdir()
        fill(one / "store.db", pool, APP, REFERENCE, args.reference, seed=1)
        rows = fill(one / "store.db", pool, APP, WINDOW, args.documents, seed=2)
        check_readable(one / "store.db", APP, WINDOW)
        config = write_config(root / "one.toml", [bench_policy()])
        settings = settings_for(one, config, args.page_size)
        many = root / "many"
        many.mkdir()
        many_config = write_config(
            root / "many.toml", [bench_policy(), speed_policy()], group_size=args.group_size
        )
        many_settings = settings_for(many, many_config)
        if not args.skip_executor:
            for index in range(args.apps):
                app_id = f"app-{index:03d}"
                fill(many / "store.db", pool, app_id, REFERENCE, args.per_app // 3, seed=index)
                fill(many / "store.db", pool, app_id, WINDOW, args.per_app, seed=1000 + index)
        generation = time.perf_counter() - began

        documents = args.documents + args.reference
        wiring.metric_catalogue(settings)  # imports the catalogue before anything is timed
        timings: dict[str, list[float]] = {"floor": [], "evaluation": [], "pandas": []}
        mismatches: list[str] = []
        for repeat in range(args.repeats):
            seconds, count = cpu_of(
                lambda: asyncio.run(read_only(one / "store.db", args.page_size))
            )
            assert count == documents, count
            timings["floor"].append(seconds)
            run = int(time.time()) * 100 + repeat
            seconds, ours = cpu_of(lambda: asyncio.run(evaluate(settings, run)))  # noqa: B023
            timings["evaluation"].append(seconds)
            seconds, theirs = cpu_of(lambda: pandas_metrics(one / "store.db"))
            timings["pandas"].append(seconds)
            mismatches = differences(ours, theirs)
            print(
                f"repeat {repeat + 1}: "
                + ", ".join(f"{k} {v[-1] / documents * 1e6:.1f} µs/doc" for k, v in timings.items())
            )

        runs: dict[int, list[ExecutorRun]] = {1: [], 2: []}
        if not args.skip_executor:
            for repeat in range(args.repeats):
                # Alternate which goes first, so neither always meets the same machine state.
                for workers in (1, 2) if repeat % 2 == 0 else (2, 1):
                    found = asyncio.run(run_executor(many_settings, workers))
                    runs[workers].append(found)
                    print(f"executor repeat {repeat + 1}, {workers} worker(s): {found}")

    text = report(args, timings, documents, rows.bytes / rows.documents, mismatches, runs,
                  generation)  # fmt: skip
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


def report(
    args: argparse.Namespace,
    timings: dict[str, list[float]],
    documents: int,
    mean_bytes: float,
    mismatches: list[str],
    runs: dict[int, list[ExecutorRun]],
    generation: float,
) -> str:
    us = {name: [s / documents * 1e6 for s in runs] for name, runs in timings.items()}
    median = {name: statistics.median(runs) for name, runs in us.items()}
    over_floor = median["evaluation"] / median["floor"]
    vs_pandas = median["pandas"] / median["evaluation"]
    lines = [
        "# Cold path throughput",
        "",
        f"Command: `python -m bench.coldpath --documents {args.documents} --reference "
        f"{args.reference} --repeats {args.repeats} --page-size {args.page_size} --apps "
        f"{args.apps} --per-app {args.per_app} --group-size {args.group_size}"
        + (" --skip-executor`" if args.skip_executor else "`"),
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}, pandas {pd.__version__}, shared 2-core box "
        f"(noisy: medians of {args.repeats}, interleaved). Data generated in {generation:.0f} s.",
        "",
        f"One app's window of {args.documents:,} stored documents (mean {mean_bytes:,.0f} bytes "
        f"of JSON) plus its reference window of {args.reference:,} (drift compares against "
        f"it): {documents:,} documents read by each mode. CPU time of this process.",
        "",
        "| mode | "
        + " | ".join(f"run {i + 1} µs/doc" for i in range(args.repeats))
        + " | median µs/doc | docs/s per core | × floor |",
        "| --- | " + " | ".join("---" for _ in range(args.repeats)) + " | --- | --- | --- |",
    ]
    labels = {
        "floor": "(a) floor: `telemetry_window` pages, nothing computed",
        "evaluation": "(b) evaluation: `ShardRunner.run_unit`, quality policy",
        "pandas": "(c) pandas: rows into a DataFrame + json_normalize + vectorised metrics",
    }
    for name, per_doc in us.items():
        lines.append(
            f"| {labels[name]} | " + " | ".join(f"{v:.1f}" for v in per_doc)
            + f" | {median[name]:.1f} | {1e6 / median[name]:,.0f} "
            f"| {median[name] / median['floor']:.2f}× |"
        )  # fmt: skip
    lines += [
        "",
        f"- Evaluation ÷ floor: **{over_floor:.2f}×** (target ≤ 1.5×: "
        f"{'met' if over_floor <= 1.5 else 'NOT met'}).",
        f"- pandas ÷ evaluation: **{vs_pandas:.2f}×** (target: evaluation ahead, > 1: "
        f"{'met' if vs_pandas > 1 else 'NOT met'}).",
        "- Checked values (latency p50/p95/p99/mean/SLO, error rate, tokens, cost, a score's "
        "p10 and share below the bar, PSI/KS on latency, JS on model_version, KS on a score): "
        + ("all equal between evaluation and pandas (1e-9 relative)." if not mismatches
           else "differ: " + "; ".join(mismatches)),
        "",
    ]  # fmt: skip
    if not args.skip_executor:
        one = statistics.median(run.wall_s for run in runs[1])
        two = statistics.median(run.wall_s for run in runs[2])
        first = runs[1][0]
        lines += [
            f"Local executor: one manifest of {first.units} units ({args.apps} apps × 2 "
            f"policies: `quality` and the lighter `speed`; {args.per_app:,} documents per app "
            f"window, {args.per_app // 3:,} in each reference) in {first.shards} shards of "
            f"{args.group_size}, each shard a `run-shard` process; wall time, alternating which "
            "goes first. In brackets: CPU seconds of the shard processes, and the machine's "
            "1-minute load average at the end of the run (2 cores).",
            "",
            "| workers | " + " | ".join(f"run {i + 1} s" for i in range(args.repeats))
            + " | median s |",
            "| --- | " + " | ".join("---" for _ in range(args.repeats)) + " | --- |",
            *[
                f"| {w} | "
                + " | ".join(
                    f"{r.wall_s:.1f} ({r.shard_cpu_s:.0f} CPU s, load {r.load:.1f})"
                    for r in runs[w]
                )
                + f" | {statistics.median(r.wall_s for r in runs[w]):.1f} |"
                for w in (1, 2)
            ],
            "",
            f"Speed-up 2 workers vs 1: **{one / two:.2f}×** (target ≥ 1.7×: "
            f"{'met' if one / two >= 1.7 else 'NOT met'}).",
            "",
        ]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
