"""``evalstream report``: one self-contained HTML file of the stored telemetry, incidents and
evaluations of a time range, to open in any browser, offline.

Exit codes: 0 written, 1 a store or the breach log could not be read, 2 invalid settings or
options.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from common.errors import EvalstreamError, Misconfigured
from evalstream.cli.options import ConfigOption, DataDirOption, existing_store, load, output_file
from store.exceptions import StoreError

EXIT_FAILED = 1
EXIT_USAGE = 2

console = Console(stderr=True, highlight=False, soft_wrap=True)


def time_range(start: str | None, end: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``--from``/``--to`` as ``report_range`` reads them, errors as the option's."""
    from evalstream.wiring.report import RangeError, report_range

    try:
        return report_range(start, end, now)
    except RangeError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from exc


def app_ids(values: list[str] | None) -> tuple[str, ...]:
    """``--app`` values as ``report_apps`` reads them, errors as the option's."""
    from evalstream.wiring.report import RangeError, report_apps

    try:
        return report_apps(values or ())
    except RangeError as exc:
        raise typer.BadParameter(str(exc), param_hint=f"--{exc.field}") from exc


def report(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="HTML file to write; its folder must exist.",
        ),
    ],
    app: Annotated[
        list[str] | None,
        typer.Option(
            "--app",
            help="App id (repeatable) \\[default: the apps with telemetry in the range, the "
            "first 40 by name; the page says how many there were].",
            show_default=False,
        ),
    ] = None,
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="Start: ISO-8601 (UTC if no zone) or a duration before --to (6h, 90m, 2d) "
            "\\[default: 24h].",
            show_default=False,
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="End, exclusive \\[default: now].", show_default=False),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Write a self-contained HTML report of the stored telemetry.

    Latency percentiles against the SLO, errors and budget burn, tokens and cost, score
    distributions, the incident timeline and evaluation results."""
    from evalstream.wiring.report import build_report
    from report import ReportRequest, render_html

    settings = existing_store(load(config, data_dir))
    output_file(output, "--output", settings.embedded.data_dir)
    first, stop = time_range(start, end, datetime.now(UTC))
    request = ReportRequest(start=first, end=stop, app_ids=app_ids(app))
    try:
        data = asyncio.run(build_report(settings, request))
    except Misconfigured as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from exc
    except (EvalstreamError, StoreError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_FAILED) from exc
    output.write_text(render_html(data), encoding="utf-8")
    requests = sum(series.requests for series in data.apps)
    console.print(
        f"wrote {output}: {len(data.apps)} apps, {requests:,} requests, "
        f"{len(data.incidents)} incidents, {len(data.evaluations)} evaluation results"
    )
