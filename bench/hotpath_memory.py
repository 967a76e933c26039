"""Memory of the hot path under sustained load: RSS sampled while one ``HotPath`` is fed
millions of stored documents from many apps.

Run ``python -m bench.hotpath_memory`` (``--events``, ``--apps``; ``--out PATH`` for the
report, bench/results/hotpath_memory.md by default). Every app sends every signal (latency,
status, tokens, output length, five scores); a snapshot is taken every ``--snapshot-every``
documents, as the processor does per batch, so the per-app snapshot caches are part of the
figure. Documents come from a pool built once and are fed with advancing event times, so
the burn-rate windows move on as in production; the pool itself is allocated before the
first sample.
"""

from __future__ import annotations

import argparse
import gc
import math
import platform
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from bench.detectors import bench_document
from schemas.appconfig import AppDirectory
from schemas.document import TelemetryDocument
from stream.hotpath import HotPath

START = datetime(2026, 1, 5, tzinfo=UTC)
SCORES = ("groundedness", "relevance", "toxicity", "coherence", "fluency")


def rss_bytes() -> int:
    """Resident set size of this process (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def document_pool(size: int, apps: int, seed: int) -> list[TelemetryDocument]:
    """``size`` documents, apps interleaved, with 32-hex trace ids; event time 0.02 s apart
    (50 events/s over all apps)."""
    rng = np.random.default_rng(seed)
    app_index = np.arange(size) % apps
    # Each app has its own typical latency; a few sit at their SLO (2000 ms for p95).
    medians = 200.0 + 800.0 * (app_index % 10) / 9
    latency = (rng.lognormal(0.0, 0.5, size) * medians).tolist()
    errors = (rng.random(size) < 0.005).tolist()
    chars = rng.normal(800, 150, size).clip(0).astype(int).tolist()
    scores = rng.beta(8, 2, (size, len(SCORES))).tolist()
    docs = []
    for i in range(size):
        when = START + timedelta(milliseconds=20 * i)
        app_id = f"app-{app_index[i]:03d}"
        row = dict(zip(SCORES, scores[i], strict=True))
        docs.append(bench_document(i, app_id, when, latency[i], errors[i], chars[i], row))
    return docs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3_000_000)
    parser.add_argument("--apps", type=int, default=200)
    parser.add_argument("--pool", type=int, default=40_000, help="distinct documents")
    parser.add_argument("--samples", type=int, default=12, help="RSS samples over the run")
    parser.add_argument("--snapshot-every", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument("--out", type=Path, default=Path("bench/results/hotpath_memory.md"))
    args = parser.parse_args(argv)

    began = time.perf_counter()
    pool = document_pool(args.pool, args.apps, args.seed)
    gc.collect()
    base_rss = rss_bytes()
    engine = HotPath(AppDirectory())
    every = max(1, args.events // args.samples)
    span = timedelta(milliseconds=20 * args.pool)  # event time covered by one pass
    rows: list[tuple[int, int, int, int, float]] = []
    breaches = 0
    kinds: Counter[str] = Counter()
    snapshot_bytes = 0
    cpu = time.process_time()
    passes = math.ceil(args.events / args.pool)
    fed = 0
    for k in range(passes):
        shift = span * k
        for doc in pool:
            if fed == args.events:
                break
            # A copy with a later event time (and its own ids): the windows keep moving.
            moved = doc.model_copy(update={"timestamp": doc.timestamp + shift}) if k else doc
            for breach in engine.observe(moved):
                breaches += 1
                kinds[f"{breach.detector} {breach.state.value}"] += 1
            fed += 1
            if fed % args.snapshot_every == 0:
                snapshot_bytes = len(engine.snapshot())
            if fed % every == 0:
                gc.collect()
                rows.append((fed, rss_bytes(), snapshot_bytes, breaches, time.process_time() - cpu))
    elapsed = time.perf_counter() - began
    signals = len(engine.state_sizes) - args.apps  # minus the per-app part
    warm = [rss for fed_at, rss, *_ in rows if fed_at > args.events // 4]
    growth = (max(warm) - min(warm)) if warm else 0

    lines = [
        "# Hot path memory under sustained load",
        "",
        f"Command: `python -m bench.hotpath_memory --events {args.events} --apps {args.apps}` "
        f"(seed {args.seed}) — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s.",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, 2 shared cores.",
        "",
        f"One `HotPath` fed {args.events:,} documents of {args.apps} apps (interleaved; every",
        "app reports latency, status, tokens, output length and five scores, so 9 signals per",
        f"app: {signals:,} (app, signal) pairs in all), cycling over a pool of {args.pool:,}",
        "documents whose event times move on by the pool's span on every pass. A snapshot",
        f"every {args.snapshot_every:,} documents, as the processor takes one per batch. RSS",
        "is read from /proc after `gc.collect()`; before the first document (pool of documents",
        f"built, interpreter and libraries loaded) it was {base_rss / 2**20:.1f} MiB.",
        "",
        "| documents fed | RSS MiB | Δ from start MiB | snapshot bytes | breaches so far | CPU s |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {fed_at:,} | {rss / 2**20:.1f} | {(rss - base_rss) / 2**20:+.1f} | "
            f"{snap:,} | {count} | {cpu_s:.0f} |"
            for fed_at, rss, snap, count, cpu_s in rows
        ],
        "",
        f"After the first quarter of the run RSS stays within {growth / 2**20:.2f} MiB "
        f"(max − min of the later samples); the snapshot is {snapshot_bytes / signals:,.0f} "
        "bytes per (app, signal) at the end. CPU per document, whole loop (copy, observe, "
        f"snapshots): {rows[-1][4] / rows[-1][0] * 1e6:.1f} µs.",
        "",
        "Breaches by detector: "
        + (", ".join(f"{name}: {count}" for name, count in sorted(kinds.items())) or "none")
        + ". App latency medians run from 200 to 1000 ms; the apps at 911 and 1000 ms have"
        " 5.8% and 8.3% of requests over the 2000 ms SLO (budget 5%), so the 3 d/6 h ticket"
        " rule (burn_warning) rightly fires once 6 h of event time (1.08 million documents"
        " at 50/s) are seen.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
