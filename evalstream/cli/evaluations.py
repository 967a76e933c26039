"""``evalstream evaluations``: stored evaluation results beside their thresholds."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from common.printable import printable
from evalstream import wiring
from evalstream.cli.coldpath import load, named_policies
from evalstream.cli.options import (
    ConfigOption,
    DataDirOption,
    checked_app_ids,
    existing_store,
    run,
)
from schemas import EvaluationResult, Thresholds


def _describe(thresholds: Thresholds | None) -> str:
    if thresholds is None:
        return ""
    parts = []
    for label, bound in (("warn", thresholds.warning), ("crit", thresholds.critical)):
        if bound is None:
            continue
        if bound.min is not None:
            parts.append(f"{label}<{bound.min:g}")
        if bound.max is not None:
            parts.append(f"{label}>{bound.max:g}")
    return f" ({', '.join(parts)})" if parts else ""


# Values a row shows beside the judged ones; breakdowns (``rate.timeout``) only with --json.
HEADLINE_VALUES = 5


def _values(result: EvaluationResult) -> str:
    judged = sorted(name for name in result.values if name in result.thresholds)
    headline = sorted(name for name in result.values if "." not in name and name not in judged)
    shown = [*judged, *headline[:HEADLINE_VALUES]]
    texts = []
    for name in shown:
        value = result.values[name]
        text = "—" if value is None else f"{value:.4g}"
        texts.append(f"{name}={text}{_describe(result.thresholds.get(name))}")
    hidden = len(result.values) - len(shown)
    if hidden:
        texts.append(f"+{hidden} more (--json)")
    return "; ".join(texts)


STATUS_STYLE = {"ok": "green", "warning": "yellow", "critical": "red"}


def evaluations(
    app_id: Annotated[str | None, typer.Option("--app", help="Only this app.")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Only this policy.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most recent results to show.")] = 50,
    json: Annotated[bool, typer.Option("--json", help="One JSON result per line.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Show stored evaluation results, newest window first, beside their thresholds."""
    settings = existing_store(load(config, data_dir))
    # Either would show an empty table, as if nothing had been evaluated.
    if app_id is not None:
        checked_app_ids([app_id], "--app")

    async def read() -> list[EvaluationResult]:
        async with wiring.evaluation_store(settings, read_only=True) as store:
            return await store.results(app_id=app_id, policy=policy, limit=limit)

    results = run(read())
    if policy is not None and not results:
        # A policy's results outlive its configuration (`make run` evaluates with a demo
        # policy of its own): only a name neither configured nor stored is a mistake.
        named_policies(settings, [policy])
    if json:
        for result in results:
            sys.stdout.write(result.model_dump_json() + "\n")
        return
    table = Table("window start", "app", "policy", "metric", "n", "status", "values (thresholds)")
    for result in results:
        # Text, not markup: an app id may read as markup (":fire:" drew an emoji), and a
        # reason may quote a judge's answer (control characters escaped).
        table.add_row(
            f"{result.window.start:%Y-%m-%d %H:%M}",
            Text(result.app_id),
            Text(f"{result.policy} v{result.policy_version}"),
            Text(result.metric),
            str(result.sample_size),
            Text(result.status, style=STATUS_STYLE.get(result.status, "dim")),
            Text(printable(_values(result) or result.reason)),
        )
    Console().print(table)
