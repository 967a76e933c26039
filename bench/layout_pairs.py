"""bench.processor in two checkouts, run alternately: is one commit slower than another?

Run: ``python -m bench.layout_pairs BEFORE_DIR AFTER_DIR [--pairs 5] [--events 20000]``, each
directory a checkout (``git worktree add --detach DIR COMMIT``); both run with this
interpreter. Every pair runs ``python -m bench.processor --events N --repeats 1 --hot-path
--no-write`` once in each checkout (the order alternates between pairs), records the load
average and the bench's rows, and writes the medians to bench/results/layout_processor.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "layout_processor.md"
MODES = ("store only", "detectors on")


def commit_of(checkout: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def one_run(checkout: Path, events: int) -> dict[str, tuple[float, float]]:
    """{mode: (CPU µs/event, × orjson)} from one bench.processor run in ``checkout``."""
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.processor",
            "--events",
            str(events),
            "--repeats",
            "1",
            "--hot-path",
            "--no-write",
        ],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells and cells[0] in MODES:
            rows[cells[0]] = (float(cells[3].replace(",", "")), float(cells[5]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()
    names = {"before": commit_of(args.before), "after": commit_of(args.after)}
    started = datetime.now(UTC)
    lines, figures = [], {(side, mode): ([], []) for side in names for mode in MODES}
    for pair in range(args.pairs):
        order = ("before", "after") if pair % 2 == 0 else ("after", "before")
        for side in order:
            load = " ".join(f"{value:.2f}" for value in os.getloadavg())
            rows = one_run(getattr(args, side), args.events)
            for mode, (cpu, ratio) in rows.items():
                figures[side, mode][0].append(cpu)
                figures[side, mode][1].append(ratio)
            cells = " | ".join(
                f"{mode}: {cpu:.1f} µs, {ratio:.1f}×" for mode, (cpu, ratio) in rows.items()
            )
            lines.append(f"{pair + 1} {side} ({names[side]}) load {load} | {cells}")
            print(lines[-1], flush=True)
    table = [
        "| mode | before CPU µs/event | after | change | before × orjson | after × orjson |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mode in MODES:
        before, after = (statistics.median(figures[s, mode][0]) for s in ("before", "after"))
        ratios = [statistics.median(figures[s, mode][1]) for s in ("before", "after")]
        table.append(
            f"| {mode} | {before:.1f} | {after:.1f} | {after / before - 1:+.1%} | "
            f"{ratios[0]:.1f} | {ratios[1]:.1f} |"
        )
    RESULTS.write_text(
        "# bench.processor in two checkouts, interleaved\n\n"
        f"`python -m bench.layout_pairs` {started:%Y-%m-%d %H:%M}-{datetime.now(UTC):%H:%M} UTC: "
        f"before = {names['before']}, after = {names['after']}, {args.pairs} pairs of "
        f"`python -m bench.processor --events {args.events} --repeats 1 --hot-path`, order "
        "alternating. Medians of the pairs:\n\n"
        + "\n".join(table)
        + "\n\nEach run (load average 1/5/15 min before it):\n\n```\n"
        + "\n".join(lines)
        + "\n```\n"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
