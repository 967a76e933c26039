"""Commands that read the telemetry store: ``status`` and ``quarantine``."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from common.printable import printable
from evalstream import wiring
from evalstream.cli.options import ConfigOption, DataDirOption, existing_store, load


def status(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Counts in the store and the processor's position in each partition."""
    settings = existing_store(load(config, data_dir))

    async def run() -> tuple[int, int]:
        async with wiring.store(settings) as store:
            return await store.count("telemetry"), await store.count("quarantine")

    telemetry, quarantined = asyncio.run(run())
    typer.echo(f"telemetry documents {telemetry}, quarantined {quarantined}")
    if settings.backend != "embedded":
        return
    for partition, last, done in wiring.log_positions(settings):
        typer.echo(f"partition {partition}: last {last} checkpoint {done} lag {last - done}")


def quarantine(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Most recent records to show.")] = 20,
    json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """Show quarantined inputs with every reason they were rejected."""
    settings = existing_store(load(config, data_dir))

    async def run() -> None:
        async with wiring.store(settings) as store:
            async for record in store.quarantine_records(limit):
                if json:
                    typer.echo(record.model_dump_json())
                else:
                    where = (
                        f"p{record.partition}#{record.sequence}"
                        if record.partition
                        else record.source
                    )
                    # The reason names the producer's keys (a metadata key is any text).
                    line = f"{record.received_at:%Y-%m-%d %H:%M:%S} {where} {record.reason}"
                    typer.echo(printable(line))

    asyncio.run(run())
