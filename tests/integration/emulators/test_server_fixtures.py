"""The local-server plumbing fails loudly and usefully when a server cannot start."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.emulators import npm_fixtures
from tests.emulators.processes import ServerStartError, start_server

pytestmark = pytest.mark.integration

READY = re.compile(r"ready on (?P<port>\d+)")


def test_missing_node_modules_names_make_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(npm_fixtures, "NODE_MODULES", tmp_path / "node_modules")

    with pytest.raises(npm_fixtures.EmulatorsNotInstalledError, match="make install"):
        npm_fixtures.start_azurite(tmp_path)
    with pytest.raises(npm_fixtures.EmulatorsNotInstalledError, match="make install"):
        npm_fixtures.start_cosmos(tmp_path)


def test_server_that_exits_reports_command_and_stderr(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; sys.stderr.write('port in use\\n'); sys.exit(3)"]

    with pytest.raises(ServerStartError) as error:
        start_server("broken", command, ready=READY, log_dir=tmp_path, timeout=10)

    message = str(error.value)
    assert "exited with code 3" in message
    assert "port in use" in message
    assert sys.executable in message


def test_server_that_never_gets_ready_is_stopped_at_the_deadline(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; print('starting', flush=True); time.sleep(60)"]

    with pytest.raises(ServerStartError, match="not ready within 1s") as error:
        start_server("slow", command, ready=READY, log_dir=tmp_path, timeout=1)

    assert "starting" in str(error.value)


def test_server_ready_line_gives_the_port(tmp_path: Path) -> None:
    script = (
        "import socket, time\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen()\n"
        "print('ready on', s.getsockname()[1], flush=True)\n"
        "time.sleep(60)\n"
    )
    server = start_server("echo", [sys.executable, "-c", script], ready=READY, log_dir=tmp_path)
    try:
        assert server.port > 0
        assert server.process.poll() is None
    finally:
        server.stop()
    assert server.process.returncode is not None
