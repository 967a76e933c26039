"""Pytest fixtures for the npm-installed local Azure servers: Azurite (Blob) and cosmosdb-server.

Also `cosmos_fault_proxy`, an HTTPS proxy in front of the cosmos server that injects 429s, 503s
and delays on demand (see fault_proxy.py for why it terminates TLS).

Both run once per test session as child processes on ports they pick themselves. They are
installed from tests/emulators/package-lock.json by `make install` (`npm ci` in this folder).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.emulators.fault_proxy import FaultProxy, running_fault_proxy
from tests.emulators.processes import ServerProcess, start_server

EMULATORS_DIR = Path(__file__).resolve().parent
NODE_MODULES = EMULATORS_DIR / "node_modules"
HOST = "127.0.0.1"

# Azurite's published development account; every Azurite accepts exactly this name and key.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
# cosmosdb-server accepts any base64 key; this is the Cosmos DB emulator's published key.
COSMOS_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU9DAVAwpjHS/0wqrJ3xfAM0bxoTRWkXGRgNZXhSH8G8Jc8hg=="
)

AZURITE_READY = re.compile(r"Blob service successfully listens on http://[^:\s]+:(?P<port>\d+)")
COSMOS_READY = re.compile(r"cosmosdb-server ready at https?://[^:\s]+:(?P<port>\d+)/")


class EmulatorsNotInstalledError(RuntimeError):
    """node or the npm packages are missing."""


def _require_installed(binary: Path) -> str:
    node = shutil.which("node")
    if node is None:
        raise EmulatorsNotInstalledError("node is not on PATH; install Node.js 20 or newer")
    if not binary.exists():
        raise EmulatorsNotInstalledError(
            f"{binary} is missing: run `make install` "
            f"(or `cd {EMULATORS_DIR} && npm ci`) to install the local Azure servers"
        )
    return node


@dataclass(frozen=True)
class Azurite:
    """A running Azurite Blob service with the development account."""

    port: int
    host: str = HOST
    account_name: str = AZURITE_ACCOUNT
    account_key: str = AZURITE_KEY

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        # The full form: BlobCheckpointStore does not understand UseDevelopmentStorage=true.
        return (
            f"DefaultEndpointsProtocol=http;AccountName={self.account_name};"
            f"AccountKey={self.account_key};BlobEndpoint={self.blob_endpoint};"
        )


@dataclass(frozen=True)
class CosmosServer:
    """A running cosmosdb-server (HTTPS, self-signed certificate, any key accepted)."""

    port: int
    host: str = HOST
    key: str = COSMOS_KEY
    scheme: str = "https"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/"


def start_azurite(log_dir: Path) -> ServerProcess:
    """Start Azurite's Blob service in memory on a free port."""
    binary = NODE_MODULES / "azurite" / "dist" / "src" / "blob" / "main.js"
    node = _require_installed(binary)
    command = [
        node,
        str(binary),
        "--blobHost",
        HOST,
        "--blobPort",
        "0",
        "--inMemoryPersistence",
        # azure-storage-blob 12.31 sends an API version newer than azurite 3.37 knows.
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    return start_server("azurite", command, ready=AZURITE_READY, log_dir=log_dir, cwd=log_dir)


def start_cosmos(log_dir: Path, *, ssl: bool = True) -> ServerProcess:
    """Start cosmosdb-server through the keep-alive launcher on a free port."""
    node = _require_installed(NODE_MODULES / "@vercel" / "cosmosdb-server" / "lib" / "index.js")
    command = [node, str(EMULATORS_DIR / "cosmos_launcher.js"), "--host", HOST, "--port", "0"]
    if not ssl:
        command.append("--no-ssl")
    return start_server("cosmos", command, ready=COSMOS_READY, log_dir=log_dir, cwd=EMULATORS_DIR)


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    try:
        yield Azurite(port=server.port)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cosmos_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CosmosServer]:
    server = start_cosmos(tmp_path_factory.mktemp("cosmos"))
    try:
        yield CosmosServer(port=server.port)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _cosmos_fault_proxy_session(cosmos_server: CosmosServer) -> Iterator[FaultProxy]:
    with running_fault_proxy(cosmos_server.port) as proxy:
        yield proxy


@pytest.fixture
def cosmos_fault_proxy(_cosmos_fault_proxy_session: FaultProxy) -> Iterator[FaultProxy]:
    """The session's fault proxy with no pending faults and an empty request log.

    Point the Cosmos client at `cosmos_fault_proxy.endpoint` with the `cosmos_server.key`.
    """
    _cosmos_fault_proxy_session.reset()
    try:
        yield _cosmos_fault_proxy_session
    finally:
        _cosmos_fault_proxy_session.reset()
