"""The root command imports a command's module only when that command runs."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from evalstream.cli import COMMANDS, app

HEAVY = ("evalstream.cli.process", "alerts.handlers", "httpx", "stream.hotpath", "plotly")


def test_every_command_is_listed_and_resolves() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in COMMANDS:
        assert f" {name} " in result.output
        help_result = CliRunner().invoke(app, [name, "--help"])
        assert help_result.exit_code == 0, (name, help_result.output)
        assert "Usage:" in help_result.output


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
