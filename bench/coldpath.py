"""Cold-path throughput: evaluating stored windows against reading them, against the pandas
script an analyst would write, and the local executor on 1 worker against 2.

Run ``python -m bench.coldpath`` (``--apps``, ``--documents`` and ``--reference`` per app,
``--measure-apps``, ``--repeats``; ``--data DIR`` keeps the generated store for later runs;
``--out PATH`` for the report, bench/results/coldpath.md by default). The store is built first
(simulator documents bulk-inserted, ``bench.coldpath_data``), outside every measurement. Then,
per repeat and interleaved, over the first ``--measure-apps`` apps' units (each unit reads the
previous hour, the drift reference, then its hour), CPU time in this process:

* **floor** — the window reads alone: ``telemetry_window`` pages of both hours, nothing computed;
* **evaluation** — ``ShardRunner.run_unit``: the same reads plus latency, errors, usage, scores
  and drift (results upserted into a scratch evaluation store, breaches to a null publisher);
* **pandas** — ``pandas.read_sql`` of the same rows, ``orjson`` + ``json_normalize``, then the
  same figures vectorised (percentiles, SLO attainment, error rate overall and by type, tokens
  and cost per model from the price table, score mean/p10/p50/share below the bar, PSI and KS of
  latency and Jensen–Shannon of model_version against the reference hour).

Executor scaling: one manifest of every app's unit (``group_size`` 5) run by ``LocalExecutor``
with 1 worker, then 2 (alternating per repeat), each shard a ``evalstream coldpath run-shard``
process; wall time. Every repeat records the 1-minute load average (the box is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd

from bench.coldpath_data import (
    POLICY,
    PRICES,
    REFERENCE,
    SCORE_BAR,
    SLO_MS,
    WINDOW,
    NullPublisher,
    StoreShape,
    app_ids,
    ensure_store,
    manifest,
    policy_toml,
)
from coldpath.executors.local import LocalExecutor
from coldpath.policies.catalogue import CATALOGUE
from coldpath.runner import DEFAULT_PAGE_SIZE, ShardRunner
from common.retry import Backoff
from evalstream import wiring
from evalstream.settings import load_settings
from schemas import AppDirectory, Unit, Window
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore

RESULTS = Path(__file__).parent / "results" / "coldpath.md"
GROUP_SIZE = 5
PSI_FLOOR = 1e-4
PSI_BINS = 10


# --- (a) floor and (b) evaluation ---------------------------------------------------------


async def read_only(store: SqliteStore, apps: list[str], page_size: int) -> int:
    """Every page of each app's reference hour then its hour; the documents read."""
    read = 0
    for app_id in apps:
        for window in (REFERENCE, WINDOW):
            async for page in store.telemetry_window([app_id], window.start, window.end, page_size):
                read += len(page)
    return read


async def evaluate(runner: ShardRunner, apps: list[str]) -> dict[str, dict[str, Any]]:
    """Each app's unit through the shard runner; the values per metric of the last app."""
    plan = manifest(len(apps), GROUP_SIZE)
    found: dict[str, dict[str, Any]] = {}
    for app_id in apps:
        outcome = await runner.run_unit(plan, Unit(app_id=app_id, policy=POLICY.name))
        found = {result.metric: dict(result.values) for result in outcome.results}
    return found


# --- (c) the analyst's pandas script ------------------------------------------------------


def _frame(connection: sqlite3.Connection, app_id: str, window: Window) -> pd.DataFrame:
    rows = pd.read_sql(
        "SELECT doc FROM telemetry WHERE app_id = ? AND ts >= ? AND ts < ? ORDER BY ts",
        connection,
        params=(app_id, window.start.timestamp(), window.end.timestamp()),
    )
    return pd.json_normalize([orjson.loads(doc) for doc in rows["doc"]])


def _psi(reference: pd.Series, current: pd.Series) -> float:
    edges = np.unique(reference.quantile([k / PSI_BINS for k in range(1, PSI_BINS)]).to_numpy())
    shares = []
    for values in (reference, current):
        counts = np.bincount(np.searchsorted(edges, values.to_numpy()), minlength=len(edges) + 1)
        shares.append(np.maximum(counts / counts.sum(), PSI_FLOOR))
    r, c = shares
    return float(np.sum((c - r) * np.log(c / r)))


def _ks(reference: pd.Series, current: pd.Series) -> float:
    a, b = np.sort(reference.to_numpy()), np.sort(current.to_numpy())
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def _js_bits(reference: pd.Series, current: pd.Series) -> float:
    shares = pd.concat(
        [reference.value_counts(normalize=True), current.value_counts(normalize=True)], axis=1
    ).fillna(0.0)
    p, q = shares.iloc[:, 0].to_numpy(), shares.iloc[:, 1].to_numpy()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.nansum(np.where(p > 0, p * np.log2(p / m), 0.0))
        kl_q = np.nansum(np.where(q > 0, q * np.log2(q / m), 0.0))
    return float((kl_p + kl_q) / 2)


def analyst(connection: sqlite3.Connection, app_id: str) -> dict[str, Any]:
    """The built-in metrics of one app's hour, as a pandas script."""
    df = _frame(connection, app_id, WINDOW)
    ref = _frame(connection, app_id, REFERENCE)
    out: dict[str, Any] = {}

    latency = df["latency_ms"].dropna()
    quantiles = latency.quantile([0.5, 0.9, 0.95, 0.99]).to_numpy()
    out["latency"] = {
        "count": len(latency),
        **dict(zip(("p50", "p90", "p95", "p99"), quantiles.tolist(), strict=True)),
        "mean": latency.mean(),
        "slo_attainment": (latency <= SLO_MS).mean(),
    }

    error = df["status"].eq("error")
    by_type = df.loc[error, "error_type"].fillna("unspecified").value_counts()
    out["errors"] = {"rate": error.mean(), **{f"rate.{k}": v / len(df) for k, v in by_type.items()}}

    prices = pd.DataFrame.from_dict(PRICES, orient="index")
    usage = df.loc[df["tokens.input"].notna(), ["model_id", "tokens.input", "tokens.output"]]
    priced = usage.join(prices, on="model_id")
    priced["cost"] = (
        priced["tokens.input"] * priced["input_per_1k"]
        + priced["tokens.output"] * priced["output_per_1k"]
    ) / 1000
    per_model = priced.groupby("model_id")[["tokens.input", "tokens.output", "cost"]].sum()
    out["usage"] = {
        "tokens_in_total": usage["tokens.input"].sum(),
        "tokens_out_total": usage["tokens.output"].sum(),
        "cost": priced["cost"].sum(),
        "per_model": per_model.to_dict(orient="index"),
    }

    scores = df.filter(like="scores.")
    low_high = scores.quantile([0.1, 0.5])
    out["scores"] = {
        f"{column.removeprefix('scores.')}.{name}": value
        for column in scores.columns
        for name, value in (
            ("mean", scores[column].mean()),
            ("p10", low_high.loc[0.1, column]),
            ("p50", low_high.loc[0.5, column]),
            ("below", (scores[column] < SCORE_BAR).sum() / scores[column].count()),
        )
    }

    ref_latency = ref["latency_ms"].dropna()
    out["drift"] = {
        "psi.latency_ms": _psi(ref_latency, latency),
        "ks.latency_ms": _ks(ref_latency, latency),
        "js.model_version": _js_bits(
            ref["model_version"].fillna("missing"), df["model_version"].fillna("missing")
        ),
    }
    return out


# --- (d) executor scaling ------------------------------------------------------------------


async def run_executor(config: Path, data_dir: Path, apps: int, workers: int, run: int) -> float:
    """Wall seconds for the local executor to run a fresh manifest (run number ``run``)."""
    settings = load_settings(config=config)
    settings = settings.model_copy(
        update={"embedded": settings.embedded.model_copy(update={"data_dir": data_dir})}
    )
    plan = manifest(apps, GROUP_SIZE, run=run)
    async with SqliteEvaluationStore(settings.embedded.store_path) as store:
        await store.stage_manifest(plan)
    executor = LocalExecutor(
        wiring.shard_command(settings),
        workers=workers,
        backoff=Backoff(initial_s=0.1, max_s=1.0, max_retries=0),
    )
    began = time.perf_counter()
    report = await executor.run(plan)
    wall = time.perf_counter() - began
    if not report.ok:
        raise RuntimeError(f"executor run failed: {report.failed}")
    return wall


# --- the run ---------------------------------------------------------------------------------


def cpu_of(action: Callable[[], Any]) -> tuple[float, Any]:
    began = time.process_time()
    result = action()
    return time.process_time() - began, result


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=40, help="apps in the store and manifest")
    parser.add_argument("--documents", type=int, default=10_000, help="per app, evaluated hour")
    parser.add_argument("--reference", type=int, default=2_500, help="per app, hour before")
    parser.add_argument("--measure-apps", type=int, default=8, help="units timed for a/b/c")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE)
    parser.add_argument("--no-executor", action="store_true", help="Skip executor scaling.")
    parser.add_argument("--data", type=Path, help="data folder to build or reuse (kept)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-write", action="store_true", help="Do not write the report.")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        data_dir = args.data or Path(folder) / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        store_path = data_dir / "store.db"
        shape = StoreShape(args.apps, args.documents, args.reference)
        began = time.perf_counter()
        built = ensure_store(store_path, shape)
        build_s = time.perf_counter() - began
        config = Path(folder) / "bench.toml"
        config.write_text(policy_toml(), encoding="utf-8")
        measured = app_ids(args.apps)[: args.measure_apps]
        documents = len(measured) * (args.documents + args.reference)

        async def floor_pass() -> int:
            async with SqliteStore(store_path) as store:
                return await read_only(store, measured, args.page_size)

        async def evaluation_pass() -> dict[str, dict[str, Any]]:
            async with (
                SqliteStore(store_path) as telemetry,
                SqliteEvaluationStore(Path(folder) / "scratch.db") as evaluations,
            ):
                runner = ShardRunner(
                    telemetry=telemetry,
                    evaluations=evaluations,
                    publisher=NullPublisher(),
                    catalogue=CATALOGUE,
                    apps=AppDirectory(),
                    page_size=args.page_size,
                )
                return await evaluate(runner, measured)

        def pandas_pass() -> dict[str, Any]:
            connection = sqlite3.connect(store_path)
            try:
                found: dict[str, Any] = {}
                for app_id in measured:
                    found = analyst(connection, app_id)
                return found
            finally:
                connection.close()

        modes: dict[str, Callable[[], Any]] = {
            "floor": lambda: asyncio.run(floor_pass()),
            "evaluation": lambda: asyncio.run(evaluation_pass()),
            "pandas": pandas_pass,
        }
        runs: dict[str, list[float]] = {name: [] for name in modes}
        loads: list[float] = []
        last: dict[str, Any] = {}
        for repeat in range(args.repeats):
            loads.append(os.getloadavg()[0])
            # Rotate the order so no mode always runs first (warm page cache, quiet box).
            names = list(modes)
            names = names[repeat % 3 :] + names[: repeat % 3]
            for name in names:
                seconds, last[name] = cpu_of(modes[name])
                runs[name].append(seconds)
            print(
                f"repeat {repeat + 1}: load {loads[-1]:.2f} "
                + ", ".join(f"{n} {runs[n][-1] / documents * 1e6:.1f} µs/doc" for n in modes),
                flush=True,
            )
        if last["floor"] != documents:
            raise RuntimeError(f"floor read {last['floor']} documents, expected {documents}")

        walls: dict[int, list[float]] = {1: [], 2: []}
        executor_loads: list[tuple[float, float]] = []
        if not args.no_executor:
            run_number = int(time.time())  # fresh manifests even on a kept store
            for repeat in range(args.repeats):
                order = (1, 2) if repeat % 2 == 0 else (2, 1)
                pair = []
                for workers in order:
                    pair.append(os.getloadavg()[0])
                    run_number += 1
                    walls[workers].append(
                        asyncio.run(run_executor(config, data_dir, args.apps, workers, run_number))
                    )
                executor_loads.append((pair[0], pair[1]) if order == (1, 2) else (pair[1], pair[0]))
                print(
                    f"executor repeat {repeat + 1}: 1 worker {walls[1][-1]:.1f} s, "
                    f"2 workers {walls[2][-1]:.1f} s",
                    flush=True,
                )

    text = report(args, runs, loads, documents, last, walls, executor_loads, built, build_s)
    print(text)
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")


def _agreement(last: dict[str, Any]) -> list[str]:
    """The last unit's values from the runner beside the pandas script's (same documents)."""
    ours, theirs = last["evaluation"], last["pandas"]
    pairs = [
        ("latency p50", ours["latency"]["p50"], theirs["latency"]["p50"]),
        ("latency p95", ours["latency"]["p95"], theirs["latency"]["p95"]),
        ("latency p99", ours["latency"]["p99"], theirs["latency"]["p99"]),
        ("SLO attainment", ours["latency"]["slo_attainment"], theirs["latency"]["slo_attainment"]),
        ("error rate", ours["errors"]["rate"], theirs["errors"]["rate"]),
        ("cost", ours["usage"]["cost"], theirs["usage"]["cost"]),
        ("PSI latency", ours["drift"]["psi.latency_ms"], theirs["drift"]["psi.latency_ms"]),
        ("KS latency", ours["drift"]["ks.latency_ms"], theirs["drift"]["ks.latency_ms"]),
        (
            "JS model_version",
            ours["drift"]["js.model_version"],
            theirs["drift"]["js.model_version"],
        ),
    ]
    for name, value in theirs["scores"].items():
        if name.endswith((".p10", ".below")):
            pairs.append((f"score {name}", ours["scores"].get(name), value))
    return [
        f"{name} {a:.6g} / {b:.6g}"
        + ("" if a is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else " (differ)")
        for name, a, b in pairs
    ]


def report(
    args: argparse.Namespace,
    runs: dict[str, list[float]],
    loads: list[float],
    documents: int,
    last: dict[str, Any],
    walls: dict[int, list[float]],
    executor_loads: list[tuple[float, float]],
    built: bool,
    build_s: float,
) -> str:
    us = {name: [s / documents * 1e6 for s in values] for name, values in runs.items()}
    med = {name: _median(values) for name, values in us.items()}
    store = f"built in {build_s:.0f} s" if built else "kept from an earlier run"
    lines = [
        "# Cold path throughput",
        "",
        f"Command: `python -m bench.coldpath --apps {args.apps} --documents {args.documents} "
        f"--reference {args.reference} --measure-apps {args.measure_apps} "
        f"--repeats {args.repeats}` — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, pandas "
        f"{pd.__version__}, 2 shared cores.",
        "",
        f"Store: {args.apps} apps × ({args.documents:,} documents in the evaluated hour + "
        f"{args.reference:,} in the hour before), simulator documents of ~1.7 KB in the "
        f"embedded SQLite store ({store}). Timed per repeat, interleaved (order rotated): "
        f"{args.measure_apps} units, {documents:,} documents read (both hours), page size "
        f"{args.page_size}; CPU time of this process per document read.",
        "",
        "| repeat | load (1 min) | floor µs/doc | evaluation µs/doc | pandas µs/doc | "
        "eval ÷ floor | pandas ÷ eval |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for index, load in enumerate(loads):
        f, e, p = us["floor"][index], us["evaluation"][index], us["pandas"][index]
        lines.append(
            f"| {index + 1} | {load:.2f} | {f:.1f} | {e:.1f} | {p:.1f} | {e / f:.2f}× | "
            f"{p / e:.2f}× |"
        )
    lines.append(
        f"| **median** | | **{med['floor']:.1f}** | **{med['evaluation']:.1f}** | "
        f"**{med['pandas']:.1f}** | **{med['evaluation'] / med['floor']:.2f}×** | "
        f"**{med['pandas'] / med['evaluation']:.2f}×** |"
    )
    lines += [
        "",
        "Documents/s per core (median): "
        + ", ".join(f"{name} {1e6 / value:,.0f}" for name, value in med.items())
        + ".",
        "",
        f"Evaluation ÷ floor: {med['evaluation'] / med['floor']:.2f}× (target ≤ 1.5×). "
        f"Pandas ÷ evaluation: {med['pandas'] / med['evaluation']:.2f}× (target > 1: "
        "evaluation ahead).",
        "",
        "Same values (last unit, evaluation / pandas): " + "; ".join(_agreement(last)) + ".",
        "",
    ]
    if walls[1]:
        speedups = [one / two for one, two in zip(walls[1], walls[2], strict=True)]
        units = args.apps
        lines += [
            f"## Executor scaling: {units} units in {math.ceil(units / GROUP_SIZE)} shards "
            f"({units * (args.documents + args.reference):,} documents), LocalExecutor",
            "",
            "| repeat | load before 1 w | 1 worker s | load before 2 w | 2 workers s | speed-up |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for index, (one, two) in enumerate(zip(walls[1], walls[2], strict=True)):
            load_one, load_two = executor_loads[index]
            lines.append(
                f"| {index + 1} | {load_one:.2f} | {one:.1f} | {load_two:.2f} | {two:.1f} | "
                f"{one / two:.2f}× |"
            )
        lines += [
            f"| **median** | | **{_median(walls[1]):.1f}** | | **{_median(walls[2]):.1f}** | "
            f"**{_median(walls[1]) / _median(walls[2]):.2f}×** (median of ratios "
            f"{_median(speedups):.2f}×) |",
            "",
            "Target ≥ 1.7× on 2 cores.",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
