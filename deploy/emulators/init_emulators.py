"""Wait until the emulators of docker-compose.yml answer, then create the checkpoint container.

Run once by the ``emulators-init`` compose service (evalstream image) before the processor and
the alert listener start: the emulator images have no shell or curl for a compose
healthcheck, and the Event Hubs checkpoint store does not create its Blob container (without
it ownership claims fail silently). Exits 0 when everything is ready, 1 after the deadline
naming what is not.

Readiness, as each emulator documents it:
- Event Hubs emulator: ``GET :5300/health`` answers 200 (health API since 2.1.0).
- Service Bus emulator: ``GET :5300/health`` answers 200 (health check and management port).
- Cosmos DB emulator (Linux, vNext): listing databases with the configured endpoint and key
  succeeds (the gateway answers before its storage engine is up and returns 503 meanwhile).
  Without a configured key: its gateway answers HTTP below 500.
- Azurite: the checkpoint container can be created (or already exists).

Every URL and the deadline can be overridden with the environment variables below.
"""

from __future__ import annotations

import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 300.0
POLL_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 5.0

EVENTHUBS_HEALTH_URL = "http://eventhubs:5300/health"
SERVICEBUS_HEALTH_URL = "http://servicebus:5300/health"
COSMOS_URL = "https://cosmosdb:8081/"


@dataclass(frozen=True)
class Check:
    """One thing that must be ready; ``probe`` returns None when it is, else why not."""

    name: str
    probe: Callable[[], str | None]


def http_status(url: str) -> int:
    """The HTTP status of GET ``url``; raises OSError when nothing answers."""
    # The Cosmos DB emulator serves a self-signed certificate; this only asks "is it up".
    context = ssl._create_unverified_context()  # noqa: S323
    request = urllib.request.Request(url, method="GET")  # noqa: S310 (URLs come from config)
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S, context=context) as reply:  # noqa: S310
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def expect_status(url: str, accept: Callable[[int], bool]) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            status = http_status(url)
        except OSError as exc:
            return f"{url}: {exc}"
        return None if accept(status) else f"{url}: HTTP {status}"

    return probe


def checkpoint_container(connection_string: str, container: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        # Imported here so the HTTP checks work in any Python; the evalstream image has it.
        from azure.core.exceptions import AzureError, ResourceExistsError
        from azure.storage.blob import BlobServiceClient

        try:
            with BlobServiceClient.from_connection_string(connection_string) as service:
                service.create_container(container)
        except ResourceExistsError:
            return None
        except AzureError as exc:
            return f"container {container!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        return None

    return probe


def cosmos_databases(endpoint: str, key: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        import warnings

        from azure.core.exceptions import AzureError
        from azure.cosmos import CosmosClient

        with warnings.catch_warnings():
            # urllib3 warns on every unverified HTTPS request; the emulator's certificate is
            # self-signed by design.
            warnings.simplefilter("ignore")
            try:
                # The emulator advertises 127.0.0.1 as its regional endpoint: stay on ours.
                client = CosmosClient(
                    endpoint,
                    key,
                    connection_verify=False,
                    enable_endpoint_discovery=False,
                    retry_total=0,
                    connection_timeout=REQUEST_TIMEOUT_S,
                )
                list(client.list_databases(max_item_count=1))
            except AzureError as exc:
                return f"{endpoint}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return None

    return probe


def checks_from_environment(env: dict[str, str]) -> list[Check]:
    checks = [
        Check(
            "Event Hubs emulator",
            expect_status(
                env.get("EVENTHUBS_HEALTH_URL", EVENTHUBS_HEALTH_URL), lambda s: s == 200
            ),
        ),
        Check(
            "Service Bus emulator",
            expect_status(
                env.get("SERVICEBUS_HEALTH_URL", SERVICEBUS_HEALTH_URL), lambda s: s == 200
            ),
        ),
    ]
    cosmos_endpoint = env.get("EVALSTREAM_AZURE__COSMOS__ENDPOINT")
    cosmos_key = env.get("EVALSTREAM_AZURE__COSMOS__KEY")
    if cosmos_endpoint and cosmos_key:
        checks.append(Check("Cosmos DB emulator", cosmos_databases(cosmos_endpoint, cosmos_key)))
    else:
        # Unauthenticated requests get 401: that still proves the gateway is serving.
        cosmos_url = env.get("COSMOS_URL", COSMOS_URL)
        checks.append(Check("Cosmos DB emulator", expect_status(cosmos_url, lambda s: s < 500)))
    connection_string = env.get("EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING")
    if connection_string:
        container = env.get(
            "EVALSTREAM_AZURE__EVENTHUBS__CHECKPOINT_CONTAINER", "evalstream-checkpoints"
        )
        checks.append(
            Check(
                "Azurite checkpoint container", checkpoint_container(connection_string, container)
            )
        )
    return checks


def wait_until_ready(
    checks: list[Check], timeout_s: float, report: Callable[[str], None] = print
) -> list[str]:
    """Poll the checks until all pass or the deadline passes; the reasons still failing."""
    pending = {check.name: check for check in checks}
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    while pending:
        for name, check in list(pending.items()):
            reason = check.probe()
            if reason is None:
                report(f"ready: {name}")
                del pending[name]
                reasons.pop(name, None)
            else:
                reasons[name] = reason
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL_S)
    return [f"{name}: {reasons[name]}" for name in pending]


def main() -> int:
    env = dict(os.environ)
    timeout_s = float(env.get("EMULATORS_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    failures = wait_until_ready(checks_from_environment(env), timeout_s)
    if failures:
        print(f"not ready after {timeout_s:.0f}s:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    print("all emulators ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
