"""The AKS CronJob of the cold path's trigger, checked without a cluster.

Every document of ``coldpath-cronjob.yaml`` is validated (strict: unknown fields fail) against
the Kubernetes OpenAPI schemas that ``kubernetes-validate`` ships (offline); then what the
schema cannot see: the scheduling promises (Forbid, deadlines, retries, resources), workload
identity wired to the service account, the command's options known to the real CLI, and the
ConfigMap's settings and config file loading into the real Settings and metric catalogue.

Run: .venv/bin/python -m pytest deploy/k8s
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import typer
import yaml

from evalstream import wiring
from evalstream.cli.coldpath import coldpath_app
from evalstream.settings import load_settings

MANIFEST = Path(__file__).parent / "coldpath-cronjob.yaml"
# The oldest Kubernetes minor AKS supports as of this manifest (CronJob timeZone is GA).
KUBERNETES_VERSION = "1.31.0"


def documents() -> dict[str, dict[str, Any]]:
    found = {}
    for document in yaml.safe_load_all(MANIFEST.read_text()):
        found[document["kind"]] = document
    return found


def test_every_document_is_valid_against_the_kubernetes_schema() -> None:
    found = documents()
    assert set(found) == {"ServiceAccount", "ConfigMap", "CronJob"}
    for document in found.values():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        # (the schema types concurrencyPolicy as a plain string: Forbid is checked below)
        (("spec", "schedule"), 5),
        (("spec", "jobTemplate", "spec", "backoffLimit"), "two"),
        (("spec", "jobTemplate", "spec", "template", "spec", "serviceAcountName"), "typo"),
    ],
)
def test_the_schema_check_rejects_a_broken_cronjob(path: tuple[str, ...], value: object) -> None:
    broken = copy.deepcopy(documents()["CronJob"])
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_cronjob_never_overlaps_and_is_bounded() -> None:
    cronjob = documents()["CronJob"]["spec"]
    assert cronjob["concurrencyPolicy"] == "Forbid"
    assert 0 < cronjob["startingDeadlineSeconds"] <= 300
    job = cronjob["jobTemplate"]["spec"]
    assert 0 < job["activeDeadlineSeconds"] <= 3600
    assert job["backoffLimit"] >= 1
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert set(container["resources"]["requests"]) == {"cpu", "memory"}
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}


def test_workload_identity_is_wired_to_the_service_account() -> None:
    found = documents()
    template = found["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = found["ServiceAccount"]["metadata"]
    assert template["spec"]["serviceAccountName"] == account["name"]
    assert account["annotations"]["azure.workload.identity/client-id"]
    assert account["namespace"] == found["CronJob"]["metadata"]["namespace"]


def test_the_container_runs_coldpath_trigger_with_options_the_cli_knows() -> None:
    found = documents()
    pod = found["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["evalstream"]
    args = container["args"]
    assert args[:2] == ["coldpath", "trigger"]
    command = typer.main.get_command(coldpath_app)
    trigger = command.commands["trigger"]  # type: ignore[attr-defined]
    known = {opt for param in trigger.params for opt in (*param.opts, *param.secondary_opts)}
    options = [arg for arg in args[2:] if arg.startswith("--")]
    assert options and set(options) <= known
    assert args[args.index("--executor") + 1] == "batch"
    (source,) = container["envFrom"]
    assert source["configMapRef"]["name"] == found["ConfigMap"]["metadata"]["name"]


def test_the_configmap_loads_into_the_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = documents()["ConfigMap"]["data"]
    config = tmp_path / "evalstream.toml"
    config.write_text(data["evalstream.toml"])
    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in data.items():
        if key.startswith("EVALSTREAM_"):
            monkeypatch.setenv(key, value)
    # The file is mounted where EVALSTREAM_CONFIG points; here it is a temporary copy.
    assert data["EVALSTREAM_CONFIG"].endswith("/evalstream.toml")
    monkeypatch.setenv("EVALSTREAM_CONFIG", str(config))
    settings = load_settings()
    assert settings.backend == "azure"
    assert settings.azure.batch.account_url
    assert [policy.name for policy in settings.coldpath.policies] == ["quality"]
    wiring.metric_catalogue(settings)  # every policy's metrics exist in the real catalogue
