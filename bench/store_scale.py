"""The embedded store's write cost as a day of one app fills it.

Run: ``python -m bench.store_scale [--rows N] [--repeats R]``.

Documents are keyed by (pk, id): pk is the app and the day, id is derived from the event (a
content hash, or a producer's event_id: random either way). An index led by (pk, id) lands every
write of a 1,000-document batch at random places in the app-day's part of it; once that part
has more pages than a batch has rows, each row costs a page of its own (WAL frame, checkpoint
copy, cache miss). The store's key is therefore led by the time, (pk, ts, id), with a (pk, id)
index only for rows of a producer's event_id (store.sqlite). The other benches start from an
empty store and never get there.

Each configuration writes ``--rows`` synthetic documents of one app-day (random 32-hex ids,
1,500-byte documents, time-ordered) in 1,000-row transactions through the store's own schema
and upsert statement, on a connection opened as the project opens its files (page size, WAL,
synchronous=NORMAL), with a checkpoint every ``CHECKPOINT_EVERY_CHANGES`` rows as the store
runs them (then the WAL starts over), and measures CPU (process time) and WAL bytes per row over
each tenth of the run:

- ``store, content ids``: as shipped, rows without an event_id (the time-led key only);
- ``store, event_ids``: as shipped, every row with a producer's event_id (both indexes);
- ``before: (pk, id) key``: the key and the (app_id, ts) index files made before the time-led
  key keep;
- ``floor: no index``: plain inserts into the table without any index (what the rows cost
  alone; not a correct store: duplicates would not be found).

Configurations interleave, ``--repeats`` times; medians. Results: bench/results/store_scale.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import common.sqlite
from common.sqlite import CHECKPOINT_EVERY_CHANGES, connect, sqlite3, transaction
from store.sqlite import _KEYS, _LEGACY_KEY, _LEGACY_UPSERT_TELEMETRY, _SCHEMA, _UPSERT_TELEMETRY

RESULTS = Path(__file__).parent / "results" / "store_scale.md"
BATCH = 1_000
DOCUMENT = b'{"pad":"' + b"x" * 1_488 + b'"}'
_INSERT = "INSERT INTO telemetry (id, pk, app_id, ts, doc) VALUES (?, ?, ?, ?, ?)"


@dataclass(frozen=True)
class Config:
    name: str
    schema: str
    statement: str
    # The row's ``named`` value (a producer's event_id), or None: a statement without it.
    named: bool | None


def configurations() -> list[Config]:
    return [
        Config("store, content ids", _SCHEMA + _KEYS, _UPSERT_TELEMETRY, False),
        Config("store, event_ids", _SCHEMA + _KEYS, _UPSERT_TELEMETRY, True),
        Config("before: (pk, id) key", _SCHEMA + _LEGACY_KEY, _LEGACY_UPSERT_TELEMETRY, None),
        Config("floor: no index", _SCHEMA, _INSERT, None),
    ]


def one_run(config: Config, rows: int, directory: Path) -> list[tuple[float, float]]:
    """(CPU µs/row, WAL KiB/row) of each tenth of ``rows`` written into a new store."""
    path = directory / "store.db"
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    connection = connect(path)
    connection.execute("PRAGMA wal_autocheckpoint=0")
    connection.executescript(config.schema)
    page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
    tenth = rows // 10
    stamp = datetime(2026, 12, 4, tzinfo=UTC).timestamp()
    parts = []
    try:
        for _ in range(10):
            rows_of_tenth: list[tuple[object, ...]] = []
            for _ in range(tenth):
                stamp += 0.001
                row = (secrets.token_hex(16), "app-000:2026-12-04", "app-000", stamp, DOCUMENT)
                rows_of_tenth.append(row if config.named is None else (*row, config.named))
            frames, cpu_before = 0, time.process_time()
            for done in range(BATCH, tenth + 1, BATCH):
                with transaction(connection):
                    connection.executemany(config.statement, rows_of_tenth[done - BATCH : done])
                if done % CHECKPOINT_EVERY_CHANGES == 0:
                    frames += connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                    connection.execute("PRAGMA wal_checkpoint(RESTART)")
            cpu = time.process_time() - cpu_before
            parts.append((cpu / tenth * 1e6, frames * page_size / tenth / 1024))
    finally:
        connection.close()
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rows % (10 * CHECKPOINT_EVERY_CHANGES):
        parser.error(f"--rows: a multiple of {10 * CHECKPOINT_EVERY_CHANGES}")
    configs = configurations()
    runs: dict[str, list[list[tuple[float, float]]]] = {c.name: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="store-scale-") as scratch:
        for repeat in range(args.repeats):
            turn = configs[repeat % len(configs) :] + configs[: repeat % len(configs)]
            for config in turn:
                runs[config.name].append(one_run(config, args.rows, Path(scratch)))
                print(f"repeat {repeat + 1}: {config.name} done", file=sys.stderr, flush=True)
    report = render(args, runs)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(report)
    print(report)


def render(args: argparse.Namespace, runs: dict[str, list[list[tuple[float, float]]]]) -> str:
    tenth = args.rows // 10
    names = list(runs)
    lines = [
        "# The embedded store's write cost as one app-day fills it",
        "",
        f"Command: `python -m bench.store_scale --rows {args.rows} --repeats {args.repeats}`",
        f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} cores; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
        f"at the end. Page size {common.sqlite.DEFAULT_PAGE_SIZE // 1024} KiB; shipped page "
        f"cache {common.sqlite.CACHE_KIB // 1024} MiB.",
        f"{args.rows:,} documents of one app-day (random ids, 1,500 bytes), {BATCH:,} per "
        f"transaction; medians of {args.repeats} interleaved repeats, per tenth of the run.",
        "",
        "| rows already stored | "
        + " | ".join(f"{n}: CPU µs/row" for n in names)
        + " | "
        + " | ".join(f"{n}: WAL KiB/row" for n in names)
        + " | store × floor (CPU) |",
        "| --- " * (2 * len(names) + 2) + "|",
    ]
    for part in range(10):
        cpu = [statistics.median(run[part][0] for run in runs[n]) for n in names]
        wal = [statistics.median(run[part][1] for run in runs[n]) for n in names]
        lines.append(
            f"| {part * tenth:,}–{(part + 1) * tenth:,} | "
            + " | ".join(f"{x:.1f}" for x in cpu)
            + " | "
            + " | ".join(f"{x:.1f}" for x in wal)
            + f" | {cpu[0] / cpu[-1]:.2f}× |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
