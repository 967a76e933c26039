"""What every command group shares: the common options, exit codes, loading the settings
with one line naming a bad setting, and running a coroutine with the project's errors shown
as one line each."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
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
        help="TOML config file (see README) \\[default: none: the built-in settings].",
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
    """The settings, ``--data-dir`` applied; exit 2 with one line naming a bad setting, or a
    data dir that is a file (every command would fail on it later, some after starting)."""
    try:
        settings = load_settings(config=config, backend=backend, data_dir=data_dir)
    except SettingsError as exc:
        raise fail(one_line(exc)) from exc
    folder = settings.embedded.data_dir
    if settings.backend == "embedded" and folder.exists() and not folder.is_dir():
        # As the data dir's own check words it (wiring.data_dir), only earlier.
        raise fail(
            f"embedded.data_dir: {folder} is not a directory; choose another directory "
            "(--data-dir, embedded.data_dir)"
        )
    return settings


def existing_store(settings: Settings, path: Path | None = None, what: str = "store") -> Settings:
    """The settings of a command that only reads the store (or ``path``, another file of the
    embedded data dir, called ``what``): on the embedded backend the file must be there
    (opening it would create an empty one, and the command would show nothing: most likely a
    mistyped --data-dir); exit 2 naming it otherwise."""
    needed = path or settings.embedded.store_path
    if settings.backend == "embedded" and not needed.exists():
        raise fail(f"no {what} at {needed} (check --data-dir; the processor creates it)")
    return settings


def moment(value: str, option: str) -> datetime:
    """An ISO 8601 time given as ``option``: no zone means UTC, a date alone its UTC midnight
    (``Z`` is accepted); exit 2 naming the option otherwise."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise fail(
            f"{option}: {value!r} is not an ISO 8601 time (e.g. 2026-12-01T08:00Z)"
        ) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def checked_app_ids(values: list[str] | None, option: str) -> list[str]:
    """``values`` given as ``option``, each an app id by the rule events are validated with
    (``report --app`` applies it too); exit 2 naming the first that is not."""
    from schemas.telemetry import APP_ID_PATTERN, is_app_id

    for value in values or ():
        if not is_app_id(value):
            raise fail(f"{option}: {value!r} is not an app id ({APP_ID_PATTERN})")
    return list(values or ())


def first_problem(exc: ValidationError) -> str:
    """A model's validation errors as one line: the first, where it is, and how many more."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"])
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where + ': ' if where else ''}{first['msg']}{more}"


# What a command writes itself into the data dir (reports, replay reports, events): an
# existing file of another kind there is the service's own (its store, log, key, lock).
_WRITTEN_SUFFIXES = frozenset({".html", ".json", ".ndjson", ".jsonl"})
_SQLITE_HEADER = b"SQLite format 3\x00"


def output_file(given: Path | str, option: str, data_dir: Path | None = None) -> Path:
    """``path`` for a command's output, checked before the command does any work: its folder
    must exist (no command creates it: a mistyped folder is refused, not made) and be
    writable, the path must not be a directory, and writing there must not destroy data (an
    existing SQLite file anywhere: a store, a log, an alert bus, a replay job; or an existing
    file of the data dir other than what commands write there); exit 2 naming it otherwise.
    ``given`` as typed, if it can be: a trailing / names a directory, which Path drops."""
    path = Path(given)
    target = path.resolve()
    problem = "Is a directory" if str(given).endswith(os.sep) else _unwritable(target)
    if problem is not None:
        raise fail(f"{option}: cannot write {path}: {problem}")
    if not target.is_file():
        return path
    with open(target, "rb") as existing:
        sqlite = existing.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER
    inside = data_dir is not None and target.is_relative_to(data_dir.resolve())
    if sqlite or (inside and target.suffix not in _WRITTEN_SUFFIXES):
        kind = "a SQLite database" if sqlite else "a file of the data dir"
        raise fail(f"{option}: {path} is {kind}; writing there would destroy it")
    return path


def _unwritable(target: Path) -> str | None:
    """Why ``target`` (resolved) cannot be written, or None."""
    if target.is_dir():
        return "Is a directory"
    if target.exists() and not target.is_file():
        return None  # a device or a pipe (/dev/stdout): opening one to try it could block
    folder = target.parent
    if not folder.exists():
        return f"No such file or directory ({folder} does not exist; create it first)"
    if not folder.is_dir():
        return f"Not a directory ({folder} is a file)"
    try:
        # Opened as the command will open it, without truncating an existing file; one made
        # here goes again (a refused command leaves nothing behind).
        flags = os.O_WRONLY | (0 if target.exists() else os.O_CREAT | os.O_EXCL)
        os.close(os.open(target, flags, 0o644))
        if flags & os.O_CREAT:
            target.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


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
