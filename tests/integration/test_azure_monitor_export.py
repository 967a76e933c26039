"""The processor's metrics exported to Azure Monitor: a local HTTP endpoint stands in for
Application Insights' ingestion endpoint and records what the exporter sends."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from evalstream.settings import DEFAULT_PARTITIONS
from stream.producers.ingest_server import bound_port, serving
from tests.integration.processor_harness import IN_PROCESS

pytestmark = pytest.mark.integration

WHEN = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()


class Ingestion:
    """Records every envelope posted to /v2.1/track and answers as the service does."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        # Connection strings end their endpoint with "/": the exporter then posts to //v2.1/track.
        self.app = Starlette(routes=[Route("/{path:path}", self.track, methods=["POST"])])

    async def track(self, request: Request) -> Response:
        if not request.url.path.endswith("/v2.1/track"):
            return Response(status_code=404)
        body = await request.body()
        if request.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        received = orjson.loads(body)
        self.envelopes.extend(received)
        answer = {"itemsReceived": len(received), "itemsAccepted": len(received), "errors": []}
        return Response(orjson.dumps(answer), media_type="application/json")

    def values(self, name: str, **labels: str) -> list[float]:
        """The values sent for a metric, in order (counters go as deltas per export)."""
        found = []
        for envelope in self.envelopes:
            data = envelope.get("data", {}).get("baseData", {})
            properties = data.get("properties", {})
            for metric in data.get("metrics", []):
                if metric["name"] == name and all(
                    properties.get(k) == v for k, v in labels.items()
                ):
                    found.append(metric["value"])
        return found


async def _run(*args: str, env: dict[str, str], stdin: bytes | None = None) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "evalstream", *args,
        env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(stdin), 120)
    assert process.returncode is not None
    return process.returncode, output


async def test_the_processors_counters_reach_the_ingestion_endpoint(tmp_path: Path) -> None:
    ingestion = Ingestion()
    lines = [json.dumps({"app_id": "a", "timestamp": WHEN, "trace_id": f"t{i}"}) for i in range(25)]
    lines += ["{broken"]
    async with serving(ingestion.app, "127.0.0.1", 0) as server:
        endpoint = f"http://127.0.0.1:{bound_port(server)}/"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("EVALSTREAM_")},
            **IN_PROCESS,
            "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
            "EVALSTREAM_AZURE__MONITOR__CONNECTION_STRING": (
                "InstrumentationKey=00000000-0000-0000-0000-000000000001;"
                f"IngestionEndpoint={endpoint}"
            ),
            "EVALSTREAM_AZURE__MONITOR__EXPORT_INTERVAL_S": "0.5",
            # The exporter's own usage reports go to Microsoft: not from a test.
            "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true",
        }
        data_dir = str(tmp_path / "data")
        code, output = await _run(
            "send", "-", "--data-dir", data_dir, env=env, stdin="\n".join(lines).encode()
        )
        assert code == 0, output.decode()
        code, output = await _run(
            "process", "--data-dir", data_dir, "--no-ingest", "--until-idle", "1", env=env
        )
        assert code == 0, output.decode()[-3000:]
    assert ingestion.envelopes, "nothing exported"
    assert {e["iKey"] for e in ingestion.envelopes} == {"00000000-0000-0000-0000-000000000001"}
    assert sum(ingestion.values("evalstream_events_total", outcome="stored")) == 25
    assert sum(ingestion.values("evalstream_events_total", outcome="quarantined")) == 1
    assert sum(ingestion.values("evalstream_quarantined_events_total", code="malformed_json")) == 1
    # a gauge: as it was
    assert ingestion.values("evalstream_partitions_owned")[0] == DEFAULT_PARTITIONS
