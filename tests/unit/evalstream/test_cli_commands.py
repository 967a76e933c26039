"""The root command imports a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

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
