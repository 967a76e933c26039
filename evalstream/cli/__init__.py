"""The ``evalstream`` command line: one module per command group, assembled here.

process.py (process, send, simulate, schema), store.py (status, quarantine), replay.py (+ its
progress display in replay_display.py), alerts.py,
coldpath.py (+ pool.py), evaluations.py, report.py; options.py holds what they share. Commands
get their adapters from ``evalstream.wiring`` only.

A command's module is imported when that command runs, not before: a Batch node starts a
fresh ``evalstream coldpath run-shard`` per shard task, and importing every command's module
(the processor, the alert handlers with httpx, ...) took about half of that start-up.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer
import typer.core
import typer.main

from common.errors import EvalstreamError, Misconfigured, leaves

# Command name -> (module, attribute): a Typer app (a command group) or a command function.
COMMANDS: dict[str, tuple[str, str]] = {
    "process": ("evalstream.cli.process", "process"),
    "send": ("evalstream.cli.process", "send"),
    "simulate": ("evalstream.cli.process", "simulate"),
    "schema": ("evalstream.cli.process", "schema"),
    "ingest-key": ("evalstream.cli.ingest", "ingest_key"),
    "status": ("evalstream.cli.store", "status"),
    "quarantine": ("evalstream.cli.store", "quarantine"),
    "alerts": ("evalstream.cli.alerts", "alerts_app"),
    "coldpath": ("evalstream.cli.coldpath", "coldpath_app"),
    "evaluations": ("evalstream.cli.evaluations", "evaluations"),
    "report": ("evalstream.cli.report", "report"),
    "replay": ("evalstream.cli.replay", "replay"),
}


class LazyCommands(typer.core.TyperGroup):
    """The root group: lists ``COMMANDS`` and imports a command's module only when asked."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        module, attribute = COMMANDS[cmd_name]
        target = getattr(importlib.import_module(module), attribute)
        if not isinstance(target, typer.Typer):
            # A Typer app holding one command converts to that command itself.
            single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
            single.command(cmd_name)(target)
            target = single
        command = typer.main.get_command(target)
        command.name = cmd_name
        return command


app = typer.Typer(
    cls=LazyCommands,
    help=(
        "evalstream: validated telemetry, real-time alerts and evaluations for AI apps.\n\n"
        "Settings come from EVALSTREAM_* environment variables over a TOML file (--config); "
        "the default backend is embedded (SQLite under var/evalstream)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def evalstream() -> None:
    # A callback makes the root a group even though its commands are only known by name.
    pass


def main() -> None:
    """Run the command; a project error no command handled is one line on stderr, never a
    traceback: exit 2 for a missing or contradictory setting, 1 for anything else."""
    try:
        app()
    except BaseException as exc:
        errors = leaves(exc)
        if not errors or not all(isinstance(error, EvalstreamError) for error in errors):
            raise
        for error in errors:
            sys.stderr.write(f"error: {error}\n")
        sys.exit(2 if all(isinstance(error, Misconfigured) for error in errors) else 1)
