"""Commands on the telemetry store: ``status`` and ``quarantine`` read it, ``upgrade-store``
gives an embedded one made by an earlier version the current telemetry key."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer

from common.printable import printable
from evalstream import wiring
from evalstream.cli.options import (
    EXIT_FAILED,
    ConfigOption,
    DataDirOption,
    existing_store,
    fail,
    load,
    say,
)
from evalstream.settings import Settings

if TYPE_CHECKING:
    from stream.sources.eventhubs_consumer import PartitionPosition


def status(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Counts in the store and the processor's position in each partition."""
    settings = existing_store(load(config, data_dir))

    async def run() -> tuple[int, int]:
        async with wiring.store(settings, read_only=True) as store:
            return await store.count("telemetry"), await store.count("quarantine")

    telemetry, quarantined = asyncio.run(run())
    typer.echo(f"telemetry documents {telemetry}, quarantined {quarantined}")
    if settings.backend != "embedded":
        for line in _hub_status(settings):
            typer.echo(line)
        return
    if not settings.embedded.log_path.exists():
        # Opening it would create it: a store copied without its log, say.
        typer.echo(f"no event log at {settings.embedded.log_path}: no partition positions")
        return
    for partition, last, done in wiring.log_positions(settings):
        typer.echo(f"partition {partition}: last {last} checkpoint {done} lag {last - done}")


def _hub_status(settings: Settings) -> list[str]:
    """A line per event hub partition: its last sequence, the processor's checkpoint, and the
    lag from where the processor resumes (its checkpoint, or the store's snapshot when that
    covers more: a lost checkpoint is resumed after it)."""
    from stream.exceptions import SourceError

    group = settings.processor.consumer_group

    async def read() -> tuple[list[PartitionPosition], dict[str, int]]:
        positions = await wiring.hub_positions(settings)
        async with wiring.store(settings, read_only=True) as store:
            covered = {}
            for position in positions:
                snapshot = await store.load_state(group, position.partition)
                if snapshot is not None:
                    covered[position.partition] = snapshot.covered_sequence
        return positions, covered

    try:
        positions, covered = asyncio.run(read())
    except SourceError as exc:
        raise fail(f"partition positions not read: {exc}", EXIT_FAILED) from None
    lines = []
    for position in positions:
        last, checkpoint = position.last_sequence, position.checkpoint
        snapshot = covered.get(position.partition, -1)
        resumed = max(-1 if checkpoint is None else checkpoint, snapshot)
        line = (
            f"partition {position.partition}: last {last} checkpoint "
            f"{'none' if checkpoint is None else checkpoint}"
        )
        if snapshot >= 0 and (checkpoint is None or snapshot != checkpoint):
            line += f" (snapshot {snapshot})"
        if resumed > last:
            line += (
                ": past the partition's end (the event hub was created again?), the processor "
                "reads it from its start"
            )
        else:
            line += f" lag {last - resumed}"
        lines.append(line)
    return lines


def quarantine(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    limit: Annotated[int, typer.Option(min=1, help="Most recent records to show.")] = 20,
    json: Annotated[bool, typer.Option("--json", help="One JSON record per line.")] = False,
) -> None:
    """Show quarantined inputs with every reason they were rejected."""
    settings = existing_store(load(config, data_dir))

    async def run() -> None:
        async with wiring.store(settings, read_only=True) as store:
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


def upgrade_store(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Give an embedded store made by an earlier version the time-led telemetry key.

    Stores made by this version have it: their write cost stays flat as an app's day fills,
    where the earlier key's grew about 4x over a million documents of one app and day. The
    documents do not change, and a store that has the key already is left as it is. Run it
    with the processor stopped (it refuses while one runs on the data dir); it reads every
    document once, in one transaction.
    """
    from stream.exceptions import SourceError

    settings = existing_store(load(config, data_dir))
    if settings.backend != "embedded":
        raise fail("upgrade-store upgrades the embedded store; Cosmos DB keeps its own keys")
    embedded = settings.embedded
    started = time.perf_counter()
    try:
        upgrade = wiring.upgrade_store_key(settings)
    except SourceError as exc:
        raise fail(f"{exc}: stop it, then upgrade the store", EXIT_FAILED) from exc
    if upgrade is None:
        say(f"{embedded.store_path} has the time-led telemetry key already: nothing to do")
        return
    say(
        f"{embedded.store_path}: telemetry key upgraded, {upgrade.documents:,} documents "
        f"({upgrade.named:,} with a producer's event_id), in {time.perf_counter() - started:.1f} s"
    )
