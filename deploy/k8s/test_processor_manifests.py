"""The processor's AKS manifests (``processor.yaml``), checked without a cluster.

Built-in kinds are validated strictly against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships; the custom resources (KEDA ScaledObject and
TriggerAuthentication, the Secrets Store CSI driver's SecretProviderClass) against the CRDs
those projects publish (copied in ``crds/``), with unknown fields refused as a strict API server
would. Then what no schema sees: KEDA never scales past the hub's partition count from the
settings, probes point at the endpoints the processor serves, the ConfigMap and the synced
Secret load into the real Settings, the Service reaches the pods.

Run: .venv/bin/python -m pytest deploy/k8s
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml

from evalstream.cli import app
from evalstream.ingest_worker import READY_FORWARD_TIMEOUT_S
from evalstream.settings import load_settings
from stream.producers.ingest_auth import ApiKey, hash_key

HERE = Path(__file__).parent
MANIFEST = HERE / "processor.yaml"
KUBERNETES_VERSION = "1.31.0"
# The azure-eventhub trigger's metadata keys (kedacore/keda pkg/scalers/azure_eventhub_scaler.go
# and pkg/scalers/azure/azure_eventhub.go): the CRD types metadata as a free map.
EVENTHUB_TRIGGER_KEYS = {
    "unprocessedEventThreshold",
    "activationUnprocessedEventThreshold",
    "stalePartitionInfoThreshold",
    "consumerGroup",
    "storageAccountName",
    "blobContainer",
    "eventHubNamespace",
    "eventHubName",
    "checkpointStrategy",
    "connectionFromEnv",
    "storageConnectionFromEnv",
    "cloud",
    "endpointSuffix",
    "storageEndpointSuffix",
}


def documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the version's openAPIV3Schema, for every CRD in crds/."""
    schemas = {}
    for path in sorted((HERE / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for version in crd["spec"]["versions"]:
            api_version = f"{crd['spec']['group']}/{version['name']}"
            schemas[(api_version, crd["spec"]["names"]["kind"])] = version["schema"][
                "openAPIV3Schema"
            ]
    return schemas


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not declare (a strict API server refuses them; a lenient one
    drops them silently, which hides typos)."""
    found: list[str] = []
    if isinstance(value, dict) and "properties" in schema:
        for key, item in value.items():
            if key in schema["properties"]:
                found += unknown_fields(item, schema["properties"][key], f"{path}.{key}")
            elif not schema.get("additionalProperties") and not schema.get(
                "x-kubernetes-preserve-unknown-fields"
            ):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def validate(document: dict[str, Any]) -> None:
    key = (document["apiVersion"], document["kind"])
    schemas = crd_schemas()
    if key not in schemas:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
        return
    jsonschema.validate(document, schemas[key])
    unknown = unknown_fields(document, schemas[key])
    if unknown:
        raise jsonschema.ValidationError(f"unknown fields: {unknown}")


def test_every_document_is_valid_against_its_schema() -> None:
    found = documents()
    assert set(found) == {
        "ServiceAccount",
        "ConfigMap",
        "SecretProviderClass",
        "Deployment",
        "Service",
        "TriggerAuthentication",
        "ScaledObject",
    }
    for document in found.values():
        validate(document)


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ScaledObject", ("spec", "maxReplicaCount"), "four"),
        ("ScaledObject", ("spec", "maxReplicaCnt"), 4),
        ("ScaledObject", ("spec", "triggers", 0, "authenticationRef", "nam"), "x"),
        ("TriggerAuthentication", ("spec", "podIdentity", "provider"), "aad-magic"),
        ("SecretProviderClass", ("spec", "secretObject"), []),
        (
            "Deployment",
            ("spec", "template", "spec", "containers", 0, "readinessProbe", "path"),
            "/",
        ),
    ],
)
def test_the_checks_reject_a_broken_document(
    kind: str, path: tuple[str | int, ...], value: object
) -> None:
    broken = copy.deepcopy(documents()[kind])
    target: Any = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(broken)


def _settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    for name, value in documents()["ConfigMap"]["data"].items():
        monkeypatch.setenv(name, value)
    # What the CSI driver syncs from Key Vault, as the Secret's keys name it.
    sender = ApiKey(name="sender", key_sha256=hash_key("k"))
    secrets = {
        "EVALSTREAM_USER_HASH_KEY": "a-long-random-secret",
        "EVALSTREAM_INGEST__AUTH__API_KEYS": f"[{sender.model_dump_json()}]",
    }
    synced = documents()["SecretProviderClass"]["spec"]["secretObjects"][0]["data"]
    assert {item["key"] for item in synced} == set(secrets)
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def test_keda_never_scales_past_the_hubs_partition_count(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(monkeypatch)
    hubs = settings.azure.eventhubs
    scaled = documents()["ScaledObject"]["spec"]
    assert scaled["maxReplicaCount"] == hubs.partitions
    assert 1 <= scaled["minReplicaCount"] <= scaled["maxReplicaCount"]
    assert scaled["scaleTargetRef"]["name"] == documents()["Deployment"]["metadata"]["name"]
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "azure-eventhub"
    metadata = trigger["metadata"]
    assert set(metadata) <= EVENTHUB_TRIGGER_KEYS
    assert metadata["eventHubName"] == hubs.eventhub_name
    assert metadata["consumerGroup"] == settings.processor.consumer_group
    assert metadata["blobContainer"] == hubs.checkpoint_container
    assert (
        hubs.fully_qualified_namespace == f"{metadata['eventHubNamespace']}.servicebus.windows.net"
    )
    assert (
        hubs.checkpoint_account_url
        == f"https://{metadata['storageAccountName']}.blob.core.windows.net"
    )
    # The Python SDK's BlobCheckpointStore keeps checkpoints in blob metadata.
    assert metadata["checkpointStrategy"] == "blobMetadata"
    auth = documents()["TriggerAuthentication"]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert auth["spec"]["podIdentity"]["provider"] == "azure-workload"


def test_the_settings_load_and_ingest_may_listen_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(monkeypatch)
    assert settings.backend == "azure"
    assert settings.ingest.host == "0.0.0.0"  # noqa: S104 (the pod listens for the Service)
    assert settings.ingest.auth.api_keys  # else the processor refuses to start
    assert settings.user_hash_key is not None


def test_a_frozen_processor_fails_the_liveness_probe_with_an_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ingest serves the pod's port from a worker process, which answers /healthz 503 once the
    processor has not answered for ``processor.health_timeout_s``: that must come before the
    probe gives up (a second for the worker's own answer and the network), and a frozen pod be
    restarted within a minute."""
    settings = _settings(monkeypatch)
    assert settings.ingest.workers is not None and settings.ingest.workers >= 1
    (container,) = documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    liveness = container["livenessProbe"]
    assert settings.processor.health_timeout_s + 1 <= liveness["timeoutSeconds"]
    assert liveness["failureThreshold"] * liveness["periodSeconds"] <= 60


def test_probes_ports_and_arguments_match_the_processor() -> None:
    found = documents()
    pod = found["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["evalstream"]
    assert container["args"][0] == "process"
    command = typer.main.get_command(app).get_command(None, "process")  # type: ignore[attr-defined]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    assert {arg for arg in container["args"][1:] if arg.startswith("--")} <= known
    (port,) = container["ports"]
    assert port["containerPort"] == int(found["ConfigMap"]["data"]["EVALSTREAM_INGEST__PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == port["name"]
    service = found["Service"]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["ports"][0]["targetPort"] == port["name"]
    assert (
        set(container["resources"]["requests"])
        == set(container["resources"]["limits"])
        == {
            "cpu",
            "memory",
        }
    )
    # Enough time to finish the batch in flight and checkpoint after SIGTERM.
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 30


def test_workload_identity_and_secrets_are_wired() -> None:
    found = documents()
    pod = found["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = found["ServiceAccount"]["metadata"]
    assert pod["spec"]["serviceAccountName"] == account["name"]
    assert account["annotations"]["azure.workload.identity/client-id"]
    (container,) = pod["spec"]["containers"]
    sources = {
        next(iter(source)): next(iter(source.values()))["name"] for source in container["envFrom"]
    }
    provider = found["SecretProviderClass"]
    assert sources == {
        "configMapRef": found["ConfigMap"]["metadata"]["name"],
        "secretRef": provider["spec"]["secretObjects"][0]["secretName"],
    }
    csi = [volume["csi"] for volume in pod["spec"]["volumes"] if "csi" in volume]
    assert csi == [
        {
            "driver": "secrets-store.csi.k8s.io",
            "readOnly": True,
            "volumeAttributes": {"secretProviderClass": provider["metadata"]["name"]},
        }
    ]


def test_a_frozen_processor_is_unready_before_the_readiness_probe_gives_up() -> None:
    """The ingest worker forwards /readyz for as long as the processor may take to ping its
    store (and a second more): a frozen processor is a 503 before the probe's own timeout."""
    (container,) = documents()["Deployment"]["spec"]["template"]["spec"]["containers"]
    readiness = container["readinessProbe"]
    assert readiness["timeoutSeconds"] >= READY_FORWARD_TIMEOUT_S + 1
