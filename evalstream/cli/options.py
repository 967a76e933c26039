"""What every command group shares: the common options, exit codes, loading the settings
with one line naming a bad setting, and running a coroutine with the project's errors shown
as one line each."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from common.errors import EvalstreamError, Misconfigured, leaves
from evalstream import logs
from evalstream.logs import LogFormat
from evalstream.settings import Settings, SettingsError, load_settings

T = TypeVar("T")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

console = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="EVALSTREAM_CONFIG",
        help="TOML config file (see README).",
        show_default=False,
        dir_okay=False,
    ),
]
# Rich reads "[default: ...]" as markup: the brackets are escaped so --help shows them.
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Embedded backend folder \\[default: var/evalstream].",
        show_default=False,
    ),
]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(value: str) -> str:
    level = value.upper()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


LogLevelOption = Annotated[
    str,
    typer.Option(
        "--log-level", callback=_log_level, help="DEBUG, INFO, WARNING or ERROR (any case)."
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format", help="text: one readable line per record; json: one object per line."
    ),
]


def with_logging(default_level: str = "INFO") -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A long-running command's ``--log-level`` (default ``default_level``) and ``--log-format``,
    the same options with the same help on every one, and its logging set up from them before
    its body runs: without that set-up its records reach only Python's last-resort handler
    (bare WARNING lines on stderr, no INFO, never JSON). The command reads the chosen format
    from ``logs.chosen_format()``."""

    def decorate(command: Callable[..., T]) -> Callable[..., T]:
        signature = inspect.signature(command, eval_str=True)
        added = [
            inspect.Parameter(
                "log_level",
                inspect.Parameter.KEYWORD_ONLY,
                default=default_level,
                annotation=LogLevelOption,
            ),
            inspect.Parameter(
                "log_format",
                inspect.Parameter.KEYWORD_ONLY,
                default="text",
                annotation=LogFormatOption,
            ),
        ]

        @functools.wraps(command)
        def configured(
            *args: Any,
            log_level: str = default_level,
            log_format: LogFormat = "text",
            **kwargs: Any,
        ) -> T:
            logs.configure(log_level, log_format)
            return command(*args, **kwargs)

        # What typer reads the options from: the command's own parameters, then these two.
        configured.__signature__ = signature.replace(  # type: ignore[attr-defined]
            parameters=[*signature.parameters.values(), *added]
        )
        return configured

    return decorate


def say(message: str) -> None:
    """A command's status line on stderr: an INFO record of ``evalstream.cli`` when the
    command logs JSON, else a plain line."""
    if logs.chosen_format() == "json":
        logging.getLogger("evalstream.cli").info(message)
    else:
        console.print(message)


def error(message: str) -> None:
    """``error: message`` on stderr: a log record of ``evalstream.cli`` when the command logs
    JSON (a collector reads only JSON lines), else the CLI's red line."""
    if logs.chosen_format() == "json":
        logging.getLogger("evalstream.cli").error(message)
    else:
        console.print(Text(f"error: {message}", style="red"))


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Say ``error: message`` (``error``); the caller raises the returned Exit."""
    error(message)
    return typer.Exit(code)


def one_line(exc: SettingsError) -> str:
    """``invalid settings:\\n  coldpath.policies.0.window: ...`` as
    ``coldpath.policies[0].window: ...`` (the first error; they are rare together)."""
    from coldpath.config import setting_path

    text = str(exc)
    if not text.startswith("invalid settings:"):
        return text
    lines = [line.strip() for line in text.splitlines()[1:] if line.strip()]
    if not lines:
        return text
    location, _, message = lines[0].partition(": ")
    path = setting_path(tuple(location.split(".")))
    more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"{path}: {message.removeprefix('Value error, ')}{more}"


def load(
    config: Path | None, data_dir: Path | None = None, *, backend: str | None = None
) -> Settings:
    """The settings, ``--data-dir`` applied; exit 2 with one line naming a bad setting."""
    try:
        return load_settings(config=config, backend=backend, data_dir=data_dir)
    except SettingsError as exc:
        raise fail(one_line(exc)) from exc


def existing_store(settings: Settings) -> Settings:
    """The settings of a command that only reads the store: on the embedded backend its file
    must be there (opening it would create an empty one, and the command would show nothing:
    most likely a mistyped --data-dir); exit 2 naming it otherwise."""
    if settings.backend == "embedded" and not settings.embedded.store_path.exists():
        raise fail(
            f"no store at {settings.embedded.store_path} (check --data-dir; the processor "
            "creates it)"
        )
    return settings


# What a command writes itself into the data dir (reports, replay reports, events): an
# existing file of another kind there is the service's own (its store, log, key, lock).
_WRITTEN_SUFFIXES = frozenset({".html", ".json", ".ndjson", ".jsonl"})
_SQLITE_HEADER = b"SQLite format 3\x00"


def output_file(path: Path, option: str, data_dir: Path | None = None) -> Path:
    """``path`` for a command's output, unless writing there would destroy data: an existing
    SQLite file anywhere (a store, a log, an alert bus, a replay job) or an existing file of
    the data dir other than what commands write there; exit 2 naming it otherwise."""
    target = path.resolve()
    if not target.is_file():
        return path
    with open(target, "rb") as existing:
        sqlite = existing.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    inside = data_dir is not None and target.is_relative_to(data_dir.resolve())
    if sqlite or (inside and target.suffix not in _WRITTEN_SUFFIXES):
        kind = "a SQLite database" if sqlite else "a file of the data dir"
        raise fail(f"{option}: {path} is {kind}; writing there would destroy it")
    return path


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run``; the project's errors end the command with one line each (exit 2 when
    every one is a missing or contradictory setting, else 1)."""
    try:
        return asyncio.run(coroutine)
    except* EvalstreamError as group:
        errors = leaves(group)
        for exc in errors:
            console.print(Text(f"error: {exc}", style="red"))
        misconfigured = all(isinstance(exc, Misconfigured) for exc in errors)
        raise typer.Exit(EXIT_USAGE if misconfigured else EXIT_FAILED) from None
