"""``evalstream ingest-key``: the setting it prints admits the key it prints, as TOML and as the
shell line of the environment variable, whatever the holder's name holds."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evalstream.cli import app
from evalstream.settings import load_settings
from stream.producers.ingest_auth import hash_key

NAME = 'O\'Brien $HOME `id` "ops"'


def test_the_printed_settings_admit_the_printed_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = CliRunner().invoke(
        app, ["ingest-key", NAME, "--app", "web-app", "--events-per-s", "5", "--burst", "20"]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    key = lines[0].removeprefix("key (shown once): ")
    toml = "\n".join(lines[lines.index("[[ingest.auth.api_keys]]") : -2])
    (tmp_path / "keys.toml").write_text(toml)
    from_file = tomllib.loads(toml)["ingest"]["auth"]["api_keys"][0]
    assert from_file["key_sha256"] == hash_key(key)
    # The shell line as an operator pastes it: the variable it sets, read back.
    shown = subprocess.run(
        ["bash", "-c", f'{lines[-1]}; printf %s "$EVALSTREAM_INGEST__AUTH__API_KEYS"'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    monkeypatch.setenv("EVALSTREAM_INGEST__AUTH__API_KEYS", shown)
    (loaded,) = load_settings().ingest.auth.api_keys
    assert (loaded.name, loaded.key_sha256, loaded.apps) == (NAME, hash_key(key), ("web-app",))
    assert (loaded.events_per_s, loaded.burst) == (5, 20)
    (from_toml,) = load_settings(config=tmp_path / "keys.toml").ingest.auth.api_keys
    assert from_toml == loaded


def test_an_app_that_is_no_app_id_is_refused() -> None:
    result = CliRunner().invoke(app, ["ingest-key", "k", "--app", "web app"])
    assert result.exit_code == 2
    assert "'web app' is neither '*' nor an app id" in " ".join(result.stderr.split())
