"""The root command imports a command's module only when that command runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import typer.main
from typer.testing import CliRunner

from evalstream.cli import COMMANDS, LazyCommands, app

app_command = typer.main.get_command(app)
HEAVY = ("evalstream.cli.process", "alerts.handlers", "httpx", "stream.hotpath", "plotly", "jwt")


def test_every_command_is_listed_and_resolves() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for name, command in COMMANDS.items():
        assert f" {name} " in result.output
        assert command.summary in result.output
        help_result = CliRunner().invoke(app, [name, "--help"])
        assert help_result.exit_code == 0, (name, help_result.output)
        assert "Usage:" in help_result.output
        # The root lists the table's summary; it must be the command's own first line.
        resolved = LazyCommands(name="evalstream").get_command(click.Context(app_command), name)
        own = resolved.short_help or resolved.help
        assert own.splitlines()[0] == command.summary, name


def test_the_root_help_imports_no_command() -> None:
    script = (
        "import sys\n"
        "from evalstream.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "ours = ('evalstream.', 'stream', 'store', 'alerts', 'coldpath')\n"
        "print(sorted(m for m in sys.modules if m.startswith(ours)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert " replay " in output
    assert output.strip().splitlines()[-1] == "['evalstream.cli']"


def test_a_shard_task_does_not_import_the_other_commands() -> None:
    script = (
        "import sys\n"
        "from evalstream.cli import app\n"
        "try:\n"
        "    app(['coldpath', 'run-shard', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert "--group-index" in output
    assert output.strip().splitlines()[-1] == "[]"


def _with_subcommands(command: click.Command) -> list[click.Command]:
    subcommands = getattr(command, "commands", {}).values()
    return [command, *(c for sub in subcommands for c in _with_subcommands(sub))]


def test_help_paragraphs_wrap_at_the_terminal_width() -> None:
    # Docstrings break their lines near 95 columns; kept, those breaks left a short line in the
    # middle of a paragraph in an 80-column terminal.
    for name in COMMANDS:
        resolved = LazyCommands(name="evalstream").get_command(click.Context(app_command), name)
        for command in _with_subcommands(resolved):
            for paragraph in (command.help or "").split("\n\n"):
                assert "\n" not in paragraph, (name, command.name, paragraph)
    result = CliRunner().invoke(app, ["process", "--help"], env={"COLUMNS": "80"})
    assert " checkpoints); a second Ctrl-C exits at once. " in result.output


# The commands that run until stopped or run a job, with their default log level.
LONG_RUNNING = {
    ("process",): "INFO",
    ("simulate",): "INFO",
    ("replay",): "WARNING",
    ("coldpath", "trigger"): "WARNING",
    ("coldpath", "backfill"): "WARNING",
    ("coldpath", "run-shard"): "WARNING",
    ("alerts", "listen"): "INFO",
}


def test_every_long_running_command_takes_the_same_logging_options() -> None:
    shown: dict[str, set[tuple[str | None, object]]] = {"log_level": set(), "log_format": set()}
    for path, level in LONG_RUNNING.items():
        command = LazyCommands(name="evalstream").get_command(click.Context(app_command), path[0])
        for name in path[1:]:
            command = command.commands[name]
        options = {param.name: param for param in command.params}
        assert {"log_level", "log_format"} <= set(options), path
        assert options["log_level"].default == level, path
        assert options["log_format"].default == "text", path
        for name, seen in shown.items():
            option = options[name]
            seen.add((getattr(option, "help", None), tuple(option.opts)))
    # One option each, with one help text, on every one of them.
    assert all(len(seen) == 1 for seen in shown.values()), shown


def test_simulate_logs_json_lines_only_with_log_format_json(tmp_path: Path) -> None:
    command = ["simulate", "--count", "3", "--no-pace", "--data-dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "evalstream", *command, "--log-format", "json"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    assert [record["message"] for record in records][-1] == "sent 3 events"
    assert records[-1]["level"] == "INFO"


def _with_paths(
    command: click.Command, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    subcommands = getattr(command, "commands", {}).items()
    return [(path, command), *(p for n, sub in subcommands for p in _with_paths(sub, (*path, n)))]


# "[default: ...]" written in a help text, escaped (\[) or not: Rich takes it for markup and
# drops an unescaped one from --help.
WRITTEN_DEFAULT = re.compile(r"\\?\[default[^\]]*\]")


def test_every_default_written_in_a_help_text_is_shown_by_help() -> None:
    checked = 0
    for name in COMMANDS:
        resolved = LazyCommands(name="evalstream").get_command(click.Context(app_command), name)
        for path, command in _with_paths(resolved, (name,)):
            texts = [command.help or "", *(getattr(p, "help", None) or "" for p in command.params)]
            written = [m.replace("\\[", "[") for t in texts for m in WRITTEN_DEFAULT.findall(t)]
            if not written:
                continue
            result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
            assert result.exit_code == 0, (path, result.output)
            # The help's boxes and wrapping aside, each must be there as written.
            shown = " ".join(result.output.replace("│", " ").split())
            for default in written:
                assert " ".join(default.split()) in shown, (path, default)
                checked += 1
    # process, simulate, replay, report, coldpath's --policy and --data-dir everywhere.
    assert checked > 20, checked
