"""The ``evalstream`` command line: one module per command group, assembled here.

process.py (process, send, simulate, schema), store.py (status, quarantine), alerts.py,
coldpath.py (+ pool.py), evaluations.py, report.py; options.py holds what they share. Commands
get their adapters from ``evalstream.wiring`` only.
"""

from __future__ import annotations

import typer

from evalstream.cli import process, store
from evalstream.cli.alerts import alerts_app
from evalstream.cli.coldpath import coldpath_app
from evalstream.cli.evaluations import evaluations
from evalstream.cli.pool import pool_app
from evalstream.cli.report import report

app = typer.Typer(
    help=(
        "evalstream: validated telemetry, real-time alerts and evaluations for AI apps.\n\n"
        "Settings come from EVALSTREAM_* environment variables over a TOML file (--config); "
        "the default backend is embedded (SQLite under var/evalstream)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

for command in (process.process, process.send, process.simulate, process.schema):
    app.command()(command)
app.command()(store.status)
app.command()(store.quarantine)
app.add_typer(alerts_app, name="alerts", help="Alert subscriptions: listen, dead letters.")
app.add_typer(
    coldpath_app, name="coldpath", help="Cold path: evaluate policies over stored windows."
)
coldpath_app.add_typer(pool_app, name="pool")
app.command("evaluations")(evaluations)
app.command("report")(report)


def main() -> None:
    app()
