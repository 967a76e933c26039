"""``evalstream coldpath pool``: the Batch pool shard tasks run on, made from the settings.

Exit codes: 0 done, 1 a Batch call or the formula's evaluation failed, 2 invalid settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from coldpath.executors.batch_config import autoscale_formula
from evalstream.cli.options import ConfigOption, fail, run
from evalstream.settings import Settings

pool_app = typer.Typer(
    help=(
        "The Azure Batch pool of the cold path (settings azure.batch.pool): two profiles, "
        "production (dedicated nodes) and cost_saving (Spot nodes, which replaced Batch's "
        "low-priority VMs retired in September 2025)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _settings(config: Path | None) -> Settings:
    from evalstream.cli.coldpath import load

    settings = load(config, None)
    if not settings.azure.batch.account_url:
        raise fail("azure.batch.account_url: required for the pool commands")
    return settings


def _print(view: object) -> None:
    from coldpath.executors.batch_pool import PoolView

    assert isinstance(view, PoolView)
    typer.echo(f"pool {view.id}: {view.state}, allocation {view.allocation_state}")
    typer.echo(f"vm size {view.vm_size}, {view.task_slots_per_node} task slots per node")
    typer.echo(f"dedicated nodes {view.dedicated_current} (target {view.dedicated_target})")
    typer.echo(f"Spot nodes {view.spot_current} (target {view.spot_target})")
    typer.echo(f"autoscale {'on' if view.autoscale else 'off'}")
    if view.last_autoscale:
        typer.echo(f"last autoscale evaluation: {view.last_autoscale}")
    for line in view.drift:
        typer.echo(f"drift (needs a new pool): {line}")


@pool_app.command()
def ensure(config: ConfigOption = None) -> None:
    """Create the pool, or re-apply its autoscale formula; report what cannot change in place."""
    from coldpath.executors import batch_pool
    from coldpath.executors.batch import batch_client

    settings = _settings(config)

    async def go() -> tuple[str, object]:
        async with batch_client(settings.azure.batch) as client:
            return await batch_pool.ensure(client, settings.azure.batch.pool)

    action, view = run(go())
    typer.echo(f"pool {settings.azure.batch.pool.id}: {action}")
    _print(view)


@pool_app.command()
def show(config: ConfigOption = None) -> None:
    """The pool's state, node counts (dedicated and Spot) and last autoscale evaluation."""
    from coldpath.executors import batch_pool
    from coldpath.executors.batch import batch_client

    settings = _settings(config)

    async def go() -> object:
        async with batch_client(settings.azure.batch) as client:
            return await batch_pool.show(client, settings.azure.batch.pool)

    _print(run(go()))


@pool_app.command()
def formula(
    evaluate: Annotated[
        bool,
        typer.Option(
            "--evaluate", help="Have Batch evaluate it on the pool now (nothing is applied)."
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Print the autoscale formula the settings generate (and, with --evaluate, its values)."""
    from evalstream.cli.coldpath import load

    settings = load(config, None)
    pool = settings.azure.batch.pool
    text = autoscale_formula(pool)
    typer.echo(text)
    if not evaluate:
        return
    from coldpath.executors import batch_pool
    from coldpath.executors.batch import batch_client

    settings = _settings(config)

    async def go() -> dict[str, str]:
        async with batch_client(settings.azure.batch) as client:
            return await batch_pool.evaluate(client, pool.id, text)

    for name, value in run(go()).items():
        typer.echo(f"{name} = {value}")
