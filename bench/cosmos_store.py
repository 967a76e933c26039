"""Cosmos store benchmark: upserts/s of ``CosmosStore.write`` by concurrency, on cosmosdb-server.

Run: ``python -m bench.cosmos_store [--documents N] [--repeats R] [--concurrency 1 8 32 ...]``.
Starts the local cosmosdb-server (keep-alive launcher), builds N simulated ~1.2 KB documents
through the real decoder and enricher once, then writes them with each concurrency in turn,
each write into a fresh database, R rounds (the levels alternate so drift on the shared machine
hits all of them alike). Reports the median documents/s per level in
bench/results/cosmos_store.md. The local server is single-threaded Node; absolute rates say
nothing about Azure, where request units and latency set the pace. What transfers is the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from azure.cosmos.aio import CosmosClient

from schemas import AppDirectory, TelemetryDocument
from store.cosmos import CosmosStore
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.producers.simulator import Simulator
from tests.emulators.npm_fixtures import COSMOS_KEY, start_cosmos

RESULTS = Path(__file__).parent / "results" / "cosmos_store.md"


def documents(count: int) -> list[TelemetryDocument]:
    now = datetime.now(UTC)
    simulator = Simulator(apps=5, rate=200.0, seed=3, start=now - timedelta(hours=1))
    decoder, enricher = Decoder(), Enricher(AppDirectory(), b"bench", "eventhubs")
    built = []
    for sequence, simulated in enumerate(simulator.events(count)):
        position = ReceivedEvent(simulated.body, "0", sequence, now, str(sequence))
        for accepted in decoder.decode(simulated.body, now).accepted:
            built.append(enricher.document(accepted.event, position, accepted.index, now, False))
    return built


async def write_rate(endpoint: str, docs: list[TelemetryDocument], concurrency: int) -> float:
    database = f"bench-{uuid.uuid4().hex[:10]}"
    async with CosmosStore(
        endpoint, COSMOS_KEY, database=database, max_concurrency=concurrency
    ) as store:
        started = time.perf_counter()
        await store.write(docs, [])
        elapsed = time.perf_counter() - started
        if await store.count("telemetry") != len(docs):
            raise RuntimeError("not every document was stored")
    async with CosmosClient(endpoint, COSMOS_KEY) as client:
        await client.delete_database(database)
    return len(docs) / elapsed


async def run(endpoint: str, count: int, repeats: int, levels: list[int]) -> dict[int, list[float]]:
    docs = documents(count)
    rates: dict[int, list[float]] = {level: [] for level in levels}
    for _ in range(repeats):
        for level in levels:
            rates[level].append(await write_rate(endpoint, docs, level))
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    args = parser.parse_args(argv)
    server = start_cosmos(Path(tempfile.mkdtemp(prefix="bench-cosmos-")))
    try:
        rates = asyncio.run(
            run(f"https://127.0.0.1:{server.port}/", args.documents, args.repeats, args.concurrency)
        )
    finally:
        server.stop()
    base = statistics.median(rates[args.concurrency[0]])
    lines = [
        "# Cosmos store: upserts/s by concurrency (local cosmosdb-server)",
        "",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.python_version()}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; "
        f"{args.documents} documents per write, median of {args.repeats}.",
        "",
        "| max_concurrency | documents/s (median) | runs | vs first |",
        "| ---: | ---: | --- | ---: |",
    ]
    for level in args.concurrency:
        median = statistics.median(rates[level])
        runs = ", ".join(f"{rate:.0f}" for rate in rates[level])
        lines.append(f"| {level} | {median:.0f} | {runs} | {median / base:.1f}x |")
    report = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)
    sys.stdout.write(report)


if __name__ == "__main__":
    main()
