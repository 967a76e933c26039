"""Checks of the container files that no docker engine here can run.

What is checked: the emulator configs follow the emulators' published schemas and declare the
entities evalstream's settings name; the compose env file loads into the real Settings; the
compose file only references files and hosts that exist; the Dockerfile and .dockerignore
cover every package pyproject installs; and init_emulators.py, run against real local
servers (Azurite, cosmosdb-server, stand-in health endpoints), waits for every emulator,
creates the checkpoint container and names whatever is not ready.

Run: .venv/bin/python -m pytest deploy/test_deploy_files.py
"""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from evalstream.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
EMULATORS = ROOT / "deploy" / "emulators"
ENV_FILE = EMULATORS / "evalstream.env"
INIT_SCRIPT = EMULATORS / "init_emulators.py"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ISO_MINUTES = re.compile(r"^PT(?:(?P<m>\d+)M)?(?:(?P<s>\d+)S)?$")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as docker compose reads them (no quotes or interpolation used here)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        values[key.strip()] = value
    return values


def iso_seconds(duration: str) -> int:
    match = ISO_MINUTES.match(duration)
    assert match, f"unexpected duration {duration!r}"
    return int(match["m"] or 0) * 60 + int(match["s"] or 0)


def settings_from_env_file(
    monkeypatch: pytest.MonkeyPatch, only: tuple[str, ...] | None = None
) -> Settings:
    """The Settings a container gets from the compose env file (or from some of its keys)."""
    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in read_env_file(ENV_FILE).items():
        if only is None or key in only:
            monkeypatch.setenv(key, value)
    return load_settings()


@pytest.fixture
def compose_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    return settings_from_env_file(monkeypatch)


# --- emulator configs -----------------------------------------------------------------------


def test_eventhubs_config_declares_the_hub_with_four_partitions() -> None:
    config = json.loads((EMULATORS / "eventhubs-config.json").read_text())["UserConfig"]
    (namespace,) = config["NamespaceConfig"]
    # The schema allows exactly this one namespace.
    assert (namespace["Type"], namespace["Name"]) == ("EventHub", "emulatorNs1")
    hubs = {hub["Name"]: hub for hub in namespace["Entities"]}
    assert 1 <= len(hubs) <= 10
    hub = hubs[read_env_file(ENV_FILE)["EVALSTREAM_AZURE__EVENTHUBS__EVENTHUB_NAME"]]
    assert hub["PartitionCount"] == "4"  # a string in the emulator's schema
    groups = [group["Name"] for group in hub.get("ConsumerGroups", [])]
    # $Default always exists; the schema forbids declaring it.
    assert "$default" not in {name.lower() for name in groups}
    assert config["LoggingConfig"]["Type"] in {"File", "Console", "File,Console", "Console,File"}


def test_servicebus_config_declares_the_topic_and_filtered_subscriptions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = ("EVALSTREAM_AZURE__SERVICEBUS__TOPIC", "EVALSTREAM_ALERTS__SUBSCRIPTIONS")
    compose_settings = settings_from_env_file(monkeypatch, only=keys)
    config = json.loads((EMULATORS / "servicebus-config.json").read_text())["UserConfig"]
    (namespace,) = config["Namespaces"]
    assert namespace["Name"] == "sbemulatorns"
    assert namespace["Queues"] == []  # required by the schema, even empty
    topics = {topic["Name"]: topic for topic in namespace["Topics"]}
    topic = topics[compose_settings.azure.servicebus.topic]
    # message_id = breach_id:state only deduplicates with duplicate detection on.
    assert topic["Properties"]["RequiresDuplicateDetection"] is True
    assert 5 <= iso_seconds(topic["Properties"]["DuplicateDetectionHistoryTimeWindow"]) <= 300

    declared = {sub["Name"]: sub for sub in topic["Subscriptions"]}
    configured = {sub.name: sub for sub in compose_settings.alerts.subscriptions}
    assert set(declared) == set(configured) == {"all", "oncall"}
    for name, subscription in declared.items():
        properties = subscription["Properties"]
        assert 60 <= iso_seconds(properties["LockDuration"]) <= 300
        assert properties["MaxDeliveryCount"] == configured[name].max_delivery_count
        assert 1 <= properties["MaxDeliveryCount"] <= 10
        assert iso_seconds(properties["LockDuration"]) == configured[name].lock_duration_s
        filters: dict[str, str] = {}
        for rule in subscription.get("Rules", []):
            assert rule["Properties"]["FilterType"] == "Correlation"
            filters.update(rule["Properties"]["CorrelationFilter"]["Properties"])
        # The rule on the bus and the filter in the settings say the same thing.
        assert filters == dict(configured[name].filter), name
    assert declared["oncall"]["Rules"][0]["Properties"]["CorrelationFilter"]["Properties"] == {
        "severity": "critical"
    }


# --- compose ---------------------------------------------------------------------------------


def test_compose_env_file_loads_into_the_settings(compose_settings: Settings) -> None:
    azure = compose_settings.azure
    assert compose_settings.backend == "azure"
    eventhubs = azure.eventhubs.connection_string
    servicebus = azure.servicebus.connection_string
    assert eventhubs is not None and servicebus is not None
    assert "Endpoint=sb://eventhubs;" in eventhubs.get_secret_value()
    assert "Endpoint=sb://servicebus;" in servicebus.get_secret_value()
    for secret in (eventhubs, servicebus):
        assert "UseDevelopmentEmulator=true" in secret.get_secret_value()
    checkpoint = azure.eventhubs.checkpoint_connection_string
    assert checkpoint is not None
    assert "BlobEndpoint=http://azurite:10000/devstoreaccount1;" in checkpoint.get_secret_value()
    assert azure.cosmos.endpoint == "https://cosmosdb:8081/"
    assert azure.cosmos.connection_verify is False


def test_compose_references_existing_files_and_services() -> None:
    compose = COMPOSE.read_text()
    services = set(re.findall(r"^  ([a-z][a-z0-9-]*):\s*$", compose, flags=re.MULTILINE))
    assert {"azurite", "eventhubs", "sqlserver", "servicebus", "cosmosdb"} <= services
    assert {"emulators-init", "processor", "alerts"} <= services
    for path in re.findall(r"\./(deploy/[\w./-]+?):/", compose):
        assert (ROOT / path).is_file(), path
    for path in re.findall(r"env_file: (\S+)", compose):
        assert (ROOT / path).is_file(), path
    # Every host the containers are told to reach is a compose service.
    hosts = re.findall(r"(?:sb|https?)://([a-z][a-z0-9-]*)[:;/]", ENV_FILE.read_text())
    assert set(hosts) == {"eventhubs", "servicebus", "azurite", "cosmosdb"}
    assert set(hosts) <= services


def test_dockerfile_installs_every_package_and_runs_the_cli() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    lines = DOCKERIGNORE.read_text().splitlines()
    # An allow-list: ignore everything, then re-include what pip needs.
    assert "*" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "setup.py", pyproject["project"]["readme"], *packages} <= allowed
    # Modules compiled on this machine stay out: the image compiles its own.
    assert "**/*.so" in lines
    assert pyproject["project"]["scripts"]["evalstream"] == "evalstream.cli:main"

    dockerfile = DOCKERFILE.read_text()
    assert "FROM python:3.11-slim" in dockerfile
    # setup.py compiles the hot path when a C compiler is there (else plain Python, slower).
    assert re.search(r"apt-get install .*\bgcc\b", dockerfile)
    assert 'ENTRYPOINT ["evalstream"]' in dockerfile
    assert 'CMD ["process"]' in dockerfile
    assert re.search(r"^USER (?!root)\w+", dockerfile, flags=re.MULTILINE)
    assert 'VOLUME ["/var/lib/evalstream"]' in dockerfile
    assert "EVALSTREAM_EMBEDDED__DATA_DIR=/var/lib/evalstream" in dockerfile
    assert "/healthz" in dockerfile


# --- init_emulators.py against real local servers --------------------------------------------


@dataclass
class HealthEndpoint:
    """A stand-in for an emulator's GET /health: 503 for the first `unhealthy` probes, then 200."""

    url: str
    requests: list[str]


@pytest.fixture
def health_endpoint() -> Iterator[HealthEndpoint]:
    requests: list[str] = []
    unhealthy = 2

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            status = 503 if len(requests) <= unhealthy else 200
            body = b'{"status":"healthy"}' if status == 200 else b'{"status":"unhealthy"}'
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HealthEndpoint(f"http://127.0.0.1:{server.server_address[1]}/health", requests)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/health"


def run_init(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")}
    # Runs this repository's own script with the test interpreter.
    return subprocess.run(  # noqa: S603
        [sys.executable, str(INIT_SCRIPT)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.integration
def test_init_waits_for_every_emulator_and_creates_the_checkpoint_container(
    tmp_path: Path, health_endpoint: HealthEndpoint
) -> None:
    from azure.storage.blob import BlobServiceClient

    from tests.emulators.npm_fixtures import Azurite, CosmosServer, start_azurite, start_cosmos

    azurite_process = start_azurite(tmp_path / "azurite")
    cosmos_process = start_cosmos(tmp_path / "cosmos")
    try:
        azurite = Azurite(port=azurite_process.port)
        cosmos = CosmosServer(port=cosmos_process.port)
        env = {
            "EVENTHUBS_HEALTH_URL": health_endpoint.url,
            "SERVICEBUS_HEALTH_URL": health_endpoint.url,
            # HTTPS with a self-signed certificate; any key is accepted there.
            "EVALSTREAM_AZURE__COSMOS__ENDPOINT": cosmos.endpoint,
            "EVALSTREAM_AZURE__COSMOS__KEY": cosmos.key,
            "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING": azurite.connection_string,
            "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONTAINER": "compose-checkpoints",
            "EMULATORS_TIMEOUT_S": "60",
        }
        first = run_init(env)
        assert first.returncode == 0, first.stderr
        assert "all emulators ready" in first.stdout
        # Both health checks saw the 503s and kept polling until the endpoint turned healthy.
        assert len(health_endpoint.requests) >= 3
        with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
            names = [container.name for container in service.list_containers()]
        assert names == ["compose-checkpoints"]

        again = run_init(env)  # a second `docker compose up`: the container already exists
        assert again.returncode == 0, again.stderr
    finally:
        azurite_process.stop()
        cosmos_process.stop()


@pytest.mark.integration
def test_init_names_what_is_not_ready_after_the_deadline(health_endpoint: HealthEndpoint) -> None:
    result = run_init(
        {
            "EVENTHUBS_HEALTH_URL": health_endpoint.url,
            "SERVICEBUS_HEALTH_URL": closed_port_url(),
            "EVALSTREAM_AZURE__COSMOS__ENDPOINT": closed_port_url().replace("/health", "/"),
            "EVALSTREAM_AZURE__COSMOS__KEY": read_env_file(ENV_FILE)[
                "EVALSTREAM_AZURE__COSMOS__KEY"
            ],
            "EMULATORS_TIMEOUT_S": "6",
        }
    )
    assert result.returncode == 1
    assert "not ready after 6s" in result.stderr
    assert "Service Bus emulator" in result.stderr
    assert "Cosmos DB emulator" in result.stderr
    assert "Event Hubs emulator" not in result.stderr


# --- docs/azure.md ---------------------------------------------------------------------------

DOCS = ROOT / "docs" / "azure.md"


def setting_exists(variable: str) -> bool:
    """Whether EVALSTREAM_A__B__C names a field of Settings (a.b.c)."""
    model: type[BaseModel] = Settings
    parts = variable.removeprefix("EVALSTREAM_").lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if index < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_docs_name_only_real_settings() -> None:
    variables = set(re.findall(r"\bEVALSTREAM_[A-Z_]*[A-Z]\b", DOCS.read_text()))
    assert len(variables) >= 20
    unknown = sorted(v for v in variables if not setting_exists(v))
    assert unknown == []


def test_docs_toml_example_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    (example,) = re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    config = tmp_path / "evalstream.toml"
    config.write_text(example)
    settings = load_settings(config=config)
    assert settings.backend == "azure"
    assert settings.azure.cosmos.create_if_missing is False
    assert settings.azure.eventhubs.fully_qualified_namespace == (
        "evalstream-ns.servicebus.windows.net"
    )
    assert [sub.name for sub in settings.alerts.subscriptions] == ["all", "oncall"]
    assert dict(settings.alerts.subscriptions[1].filter) == {"severity": "critical"}
