"""The ``evalstream`` command line: one module per command group, assembled here.

process.py (process, send, simulate, schema), store.py (status, quarantine, upgrade-store),
replay.py (+ its progress display in replay_display.py), alerts.py, coldpath.py (+ pool.py),
evaluations.py, report.py; options.py holds what they share. Commands get their adapters from
``evalstream.wiring`` only.

A command's module is imported when that command runs, not before: a Batch node starts a
fresh ``evalstream coldpath run-shard`` per shard task, and importing every command's module
(the processor, the alert handlers with httpx, ...) took about half of that start-up.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import typer
import typer.core
import typer.main

# typer vendors click (0.29: ``typer._click``); its usage errors are that copy's classes.
from typer._click import exceptions as click_exceptions

from common.errors import EvalstreamError, Misconfigured, leaves


class Command(NamedTuple):
    """Where a command lives (``attribute`` of ``module``: a Typer app, i.e. a command group, or
    a command function) and its line in the root's ``--help``, kept here so listing the
    commands imports none of them (a test checks each line against the command's own help)."""

    module: str
    attribute: str
    summary: str


COMMANDS: dict[str, Command] = {
    "process": Command(
        "evalstream.cli.process",
        "process",
        "Run the processor: consume, validate, store, detect, alert, checkpoint.",
    ),
    "send": Command(
        "evalstream.cli.process",
        "send",
        "Append NDJSON events to the configured source, as a producer would.",
    ),
    "simulate": Command(
        "evalstream.cli.process",
        "simulate",
        "Produce realistic, deterministic telemetry (to the source, or NDJSON with --output).",
    ),
    "schema": Command(
        "evalstream.cli.process",
        "schema",
        "Print the JSON Schema of TelemetryEvent (what producers send).",
    ),
    "ingest-key": Command(
        "evalstream.cli.ingest",
        "ingest_key",
        "Make a new random API key for POST /api/telemetry.",
    ),
    "status": Command(
        "evalstream.cli.store",
        "status",
        "Counts in the store and the processor's position in each partition.",
    ),
    "quarantine": Command(
        "evalstream.cli.store",
        "quarantine",
        "Show quarantined inputs with every reason they were rejected.",
    ),
    "upgrade-store": Command(
        "evalstream.cli.store",
        "upgrade_store",
        "Give an embedded store made by an earlier version the time-led telemetry key.",
    ),
    "alerts": Command(
        "evalstream.cli.alerts", "alerts_app", "Alert subscriptions: listen, dead letters."
    ),
    "coldpath": Command(
        "evalstream.cli.coldpath",
        "coldpath_app",
        "Cold path: evaluate policies over stored windows.",
    ),
    "evaluations": Command(
        "evalstream.cli.evaluations",
        "evaluations",
        "Show stored evaluation results, newest window first, beside their thresholds.",
    ),
    "report": Command(
        "evalstream.cli.report",
        "report",
        "Write a self-contained HTML report of the stored telemetry.",
    ),
    "replay": Command(
        "evalstream.cli.replay",
        "replay",
        "Re-run a time range of a source through the pipeline, as a resumable job.",
    ),
}


class LazyCommands(typer.core.TyperGroup):
    """The root group: lists ``COMMANDS`` and imports a command's module only when asked."""

    _listing = False

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        # The root's --help shows each command's summary line: stand-ins carry it, so the
        # help imports no command's module (all of them took ~0.5 s).
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        with _usage_error_in_one_line():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        # A subcommand's arguments are parsed in here (its own make_context).
        with _usage_error_in_one_line():
            return super().invoke(ctx)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        if cmd_name not in COMMANDS:
            return None
        module, attribute, summary = COMMANDS[cmd_name]
        if self._listing:
            return typer.core.TyperCommand(cmd_name, help=summary)
        target = getattr(importlib.import_module(module), attribute)
        if not isinstance(target, typer.Typer):
            # A Typer app holding one command converts to that command itself.
            single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
            single.command(cmd_name)(target)
            target = single
        command = typer.main.get_command(target)
        command.name = cmd_name
        return reflowed(command)


@contextlib.contextmanager
def _usage_error_in_one_line() -> Iterator[None]:
    """A usage error of click's (an unknown option, a missing argument, a value out of range)
    as the project's other operator errors: one ``error:`` line, exit 2, rather than typer's
    box of usage, hint and framed message. A bare group's help (no arguments) stays."""
    try:
        yield
    except click_exceptions.NoArgsIsHelpError:
        raise
    except click_exceptions.ClickException as exc:
        from evalstream.cli.options import error

        context = getattr(exc, "ctx", None)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        error(exc.format_message() + hint)
        raise typer.Exit(exc.exit_code) from None


def reflowed(command: Any) -> Any:
    """``command`` and its subcommands with each paragraph of their help on one line, so the
    terminal wraps it at its own width. The docstrings break lines near 95 columns, and typer's
    help keeps those breaks: in an 80-column terminal every paragraph came out ragged. A
    paragraph with an indented or list line is left as written."""
    if command.help:
        paragraphs = inspect.cleandoc(command.help).split("\n\n")
        command.help = "\n\n".join(
            paragraph
            if any(line[:1] in (" ", "-", "*", "\b") for line in paragraph.splitlines())
            else " ".join(paragraph.split("\n"))
            for paragraph in paragraphs
        )
    for sub in getattr(command, "commands", {}).values():
        reflowed(sub)
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
    traceback: exit 2 for a missing or contradictory setting or an unusable data file
    (Misconfigured), 1 for anything else."""
    try:
        app()
    except BaseException as exc:
        errors = leaves(exc)
        if not errors or not all(isinstance(error, EvalstreamError) for error in errors):
            raise
        for error in errors:
            sys.stderr.write(f"error: {error}\n")
        sys.exit(2 if all(isinstance(error, Misconfigured) for error in errors) else 1)
