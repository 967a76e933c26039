"""The coldpath commands that follow a Batch job say, in their --help, for how long they follow
it (azure.batch.follow_timeout, its default) and what happens when that passes."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from evalstream.cli import app

# What the help must tell, each read as words in the help (line breaks and table borders aside).
PROMISES = (
    "A Batch job is followed for at most azure.batch.follow_timeout",
    "default: derived from the task limits, (max_task_retry_count + 1) × max_wall_clock_time",
    "the job is left as it is (not deleted or stopped; its tasks may still run)",
    "the command exits with code 1",
    "look at the job later with `evalstream coldpath status JOB`",
)


def help_words(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return " ".join(result.output.replace("│", " ").split())


@pytest.mark.parametrize("command", ["trigger", "backfill"])
def test_a_command_following_batch_jobs_says_how_long_and_what_then(command: str) -> None:
    words = help_words("coldpath", command)

    for promise in PROMISES:
        assert promise in words, (command, promise)


def test_trigger_says_it_under_wait() -> None:
    words = help_words("coldpath", "trigger")

    wait = words[words.index("--wait") :]
    assert wait.index("followed for at most azure.batch.follow_timeout") < wait.index("--config")
