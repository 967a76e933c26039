"""Start and stop the local test servers as child processes, waiting on their readiness.

A server is ready when it has printed its ready line (which names the port it bound, so port 0
can be used and no free port has to be guessed) and accepts TCP connections. Output goes to files
in a scratch directory, so a chatty server never blocks on a full pipe and its stderr can be
quoted when it fails to start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 30.0
DEFAULT_STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.05


class ServerStartError(RuntimeError):
    """A server process exited or did not become ready before its deadline."""


@dataclass
class ServerProcess:
    """A running server: its process, the port it reported and where its output goes."""

    name: str
    command: list[str]
    process: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it does not exit in time."""
        if self.process.poll() is not None:
            return
        # Each server runs in its own session, so its children (a batch task's shell, node's
        # workers) go with it and nothing else on the machine is touched.
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("server %s did not stop in %.0fs; killing it", self.name, timeout)
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def start_server(
    name: str,
    command: list[str],
    *,
    ready: re.Pattern[str],
    log_dir: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    timeout: float = DEFAULT_START_TIMEOUT,
) -> ServerProcess:
    """Run `command` and wait until its stdout matches `ready` and its port accepts connections.

    `ready` must capture the bound port in a group named ``port``. On failure the process is
    stopped and ServerStartError names the command and quotes its output.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = log_dir / f"{name}.stdout.log"
    stderr_path = log_dir / f"{name}.stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        # The command is the caller's own argv list (no shell): the launchers in this package
        # build it from fixed program paths, so there is nothing untrusted to inject.
        process = subprocess.Popen(  # noqa: S603 - argv list from our launchers, no shell
            command,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )

    def fail(reason: str) -> ServerStartError:
        server.stop(timeout=5.0)
        return ServerStartError(
            f"{name} {reason}\ncommand: {' '.join(command)}\ncwd: {cwd or os.getcwd()}\n"
            f"stdout:\n{_read(stdout_path)[-4000:]}\nstderr:\n{_read(stderr_path)[-4000:]}"
        )

    server = ServerProcess(name, command, process, 0, stdout_path, stderr_path)
    deadline = time.monotonic() + timeout
    while True:
        match = ready.search(_read(stdout_path))
        if match and _accepts_connections(host, int(match.group("port"))):
            server.port = int(match.group("port"))
            logger.info("server %s ready on port %d (pid %d)", name, server.port, process.pid)
            return server
        if process.poll() is not None:
            raise fail(f"exited with code {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            raise fail(f"was not ready within {timeout:.0f}s")
        time.sleep(POLL_INTERVAL)
