"""The cold path on the local Azure servers: telemetry in the Cosmos server, manifests in Azurite,
shard tasks on the Batch test server, breaches on the AMQP broker's Service Bus topic.

``AzureColdpath`` holds one test's names (database, containers, topic, pool) and gives the
settings and environment both the trigger and the tasks use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from azure.batch import models as batch
from azure.batch.aio import BatchClient
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError
from azure.cosmos.aio import CosmosClient
from pydantic import SecretStr

from coldpath.executors.batch_config import BatchSettings, PoolSettings
from coldpath.shards import build_manifest
from evalstream.settings import Settings, load_settings
from schemas import EvaluationResult, JobManifest
from store.cosmos import CosmosStore
from store.cosmos_evaluations import CosmosEvaluationStore
from tests.emulators.batch_fixtures import BatchServer
from tests.unit.coldpath.fakes import doc
from tests.unit.coldpath.test_runner import POLICY, WINDOW

REPO_ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 3, 1, 0, tzinfo=UTC)
CONFIG = """
[coldpath]
catalogue = "tests.unit.coldpath.fakes:CATALOGUE"
group_size = {group_size}
workers = 2
shard_retries = 5
shard_backoff_s = 0.05

[[coldpath.policies]]
name = "speed"
apps = {apps}
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = {{ p95 = {{ warning = {{ max = 400.0 }}, critical = {{ max = 800.0 }} }} }}
[[coldpath.policies.metrics]]
metric = "shift"
thresholds = {{ shift = {{ warning = {{ max = 150.0 }} }} }}

[[coldpath.policies]]
name = "health"
apps = {apps}
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "errors"
thresholds = {{ rate = {{ warning = {{ max = 0.1 }}, critical = {{ max = 0.3 }} }} }}
"""
IGNORED = {"computed_at", "manifest_id", "run"}
# Policies name their apps: the Cosmos evaluation store lists a window's apps with SELECT
# DISTINCT, which the Cosmos test server does not parse (notes/emulators.md).
POOL_ID = "coldpath-tests"


def app_id(prefix: str, number: int) -> str:
    return f"{prefix}-{number:03d}"


def documents(prefix: str, apps: int, hours: int, seed: int = 5) -> list[Any]:
    """Per app and hour 12-30 documents; some apps slow or failing in some hours (the hour
    before START is the drift reference)."""
    rng = random.Random(seed)
    out = []
    for number in range(apps):
        app = app_id(prefix, number)
        for hour in range(-1, hours):
            slow = 1 + (number % 5 == hour % 5) * 4
            for n in range(rng.randint(12, 30)):
                moment = START + timedelta(hours=hour, seconds=rng.uniform(0, 3599))
                out.append(
                    doc(
                        app,
                        moment,
                        latency_ms=rng.uniform(50, 200) * slow,
                        error=rng.random() < (0.4 if number % 4 == hour % 4 else 0.02),
                        number=n,
                    )
                )
    return out


@dataclass
class AzureColdpath:
    """One test's slice of the local Azure servers."""

    tmp: Path
    cosmos: Any
    amqp: Any
    azurite: Any
    batch: BatchServer
    name: str = field(default_factory=lambda: f"cp-{uuid.uuid4().hex[:8]}")
    group_size: int = 3
    apps: int = 6
    cosmos_endpoint: str | None = None  # the tasks' endpoint (a fault proxy), if not the server

    @property
    def config(self) -> Path:
        path = self.tmp / "coldpath.toml"
        if not path.exists():
            apps = json.dumps([app_id(self.name, n) for n in range(self.apps)])
            path.write_text(CONFIG.format(group_size=self.group_size, apps=apps))
        return path

    def topic(self, label: str) -> str:
        topic = f"{self.name}-{label}"
        if topic not in self._topics:
            self.amqp.create_topic(topic)
            self.amqp.create_subscription(topic, "all")
            self._topics.add(topic)
        return topic

    def __post_init__(self) -> None:
        self._topics: set[str] = set()

    def env(self, label: str, *, tasks: bool = False, **extra: str) -> dict[str, str]:
        """EVALSTREAM_* settings of the azure backend; results, progress and breaches of run
        ``label`` in containers and a topic of their own. ``tasks``: the endpoint tasks use."""
        endpoint = self.cosmos_endpoint if tasks and self.cosmos_endpoint else self.cosmos.endpoint
        return {
            "EVALSTREAM_CONFIG": str(self.config),
            "EVALSTREAM_BACKEND": "azure",
            "EVALSTREAM_AZURE__COSMOS__ENDPOINT": endpoint,
            "EVALSTREAM_AZURE__COSMOS__KEY": self.cosmos.key,
            "EVALSTREAM_AZURE__COSMOS__DATABASE": self.name,
            "EVALSTREAM_AZURE__COSMOS__EVALUATIONS_CONTAINER": f"evaluations-{label}",
            "EVALSTREAM_AZURE__COSMOS__STATE_CONTAINER": f"state-{label}",
            "EVALSTREAM_AZURE__SERVICEBUS__CONNECTION_STRING": (
                self.amqp.servicebus_connection_string()
            ),
            "EVALSTREAM_AZURE__SERVICEBUS__TOPIC": self.topic(label),
            **extra,
        }

    def trigger_env(self, label: str, **task_extra: str) -> dict[str, str]:
        """The trigger's environment: the run's settings plus the Batch executor's."""
        return {
            **self.env(label),
            "EVALSTREAM_AZURE__BATCH__ACCOUNT_URL": self.batch.url,
            "EVALSTREAM_AZURE__BATCH__ACCOUNT_NAME": self.batch.account_name,
            "EVALSTREAM_AZURE__BATCH__ACCOUNT_KEY": self.batch.account_key,
            "EVALSTREAM_AZURE__BATCH__POOL__ID": POOL_ID,
            "EVALSTREAM_AZURE__BATCH__STAGING__CONNECTION_STRING": self.azurite.connection_string,
            "EVALSTREAM_AZURE__BATCH__STAGING__CONTAINER": self.name,
            "EVALSTREAM_AZURE__BATCH__COMMAND": f"{sys.executable} -m evalstream",
            "EVALSTREAM_AZURE__BATCH__POLL_INTERVAL_S": "0.2",
            "EVALSTREAM_AZURE__BATCH__MAX_TASK_RETRY_COUNT": "4",
            "EVALSTREAM_AZURE__BATCH__ENVIRONMENT": json.dumps(
                # Tasks run in their own directory: the test catalogue must stay importable.
                self.env(label, tasks=True, PYTHONPATH=str(REPO_ROOT), **task_extra)
            ),
        }

    def settings(self, label: str, **task_extra: str) -> Settings:
        env = self.trigger_env(label, **task_extra)
        # load_settings reads the process environment; these are the overrides.
        import os

        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            return load_settings(config=self.config)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    async def seed(self, docs: list[Any]) -> None:
        async with CosmosStore(self.cosmos.endpoint, self.cosmos.key, database=self.name) as s:
            await s.write(docs, [])

    def evaluation_store(self, label: str) -> CosmosEvaluationStore:
        return CosmosEvaluationStore(
            self.cosmos.endpoint,
            self.cosmos.key,
            database=self.name,
            evaluations_container=f"evaluations-{label}",
            state_container=f"state-{label}",
        )

    async def results(self, label: str) -> list[EvaluationResult]:
        async with self.evaluation_store(label) as store:
            return await store.results(limit=100_000)

    def breach_ids(self, label: str) -> list[str]:
        messages = self.amqp.servicebus_peek(f"{self.topic(label)}/Subscriptions/all", 10_000)
        return sorted(str(message.message_id) for message in messages)

    def publishes(self, label: str) -> tuple[int, int]:
        """(accepted, dropped as duplicates): every publish the topic received."""
        accepted, duplicates = self.amqp.servicebus_sent(self.topic(label))
        return int(accepted), int(duplicates)

    async def drop(self) -> None:
        async with CosmosClient(self.cosmos.endpoint, self.cosmos.key) as client:
            await client.delete_database(self.name)


async def ensure_pool(server: BatchServer, *, nodes: int = 2, slots: int = 4) -> None:
    credential = AzureNamedKeyCredential(server.account_name, server.account_key)
    async with BatchClient(server.url, credential) as client:
        with contextlib.suppress(ResourceExistsError):
            await client.create_pool(
                batch.BatchPoolCreateOptions(
                    id=POOL_ID,
                    vm_size="standard_d2s_v3",
                    target_dedicated_nodes=nodes,
                    task_slots_per_node=slots,
                )
            )


def executor_settings(server: BatchServer, pool_id: str = POOL_ID) -> BatchSettings:
    """Tasks that run `true` (any arguments, exit 0) on the test server's pool."""
    return BatchSettings(
        account_url=server.url,
        account_name=server.account_name,
        account_key=SecretStr(server.account_key),
        pool=PoolSettings(id=pool_id),
        command="true",
        chunk_size=1,
        submit_concurrency=1,
        poll_interval_s=0.05,
    )


async def stage_nowhere(_: JobManifest) -> str:
    return "https://staging.invalid/manifest.json"


def one_off_manifest(apps: int) -> JobManifest:
    names = [f"app-{n}" for n in range(apps)]
    return build_manifest(
        WINDOW, [POLICY], names, group_size=1, code_version=uuid.uuid4().hex, run=0
    )


def comparable(results: list[EvaluationResult]) -> dict[str, dict[str, Any]]:
    return {r.id: r.model_dump(mode="json", exclude=IGNORED) for r in results}


def run_async(coroutine: Any) -> Any:
    return asyncio.run(coroutine)
