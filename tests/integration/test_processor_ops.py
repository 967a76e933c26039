"""A running processor as an operator sees it: /metrics and the status line agree with the store,
/readyz tells what is wrong and recovers, /healthz answers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from evalstream.settings import DEFAULT_PARTITIONS
from tests.integration.processor_harness import (
    answers,
    free_port,
    start_processor,
    store_contents,
    wait_until,
)

pytestmark = pytest.mark.integration

ENV = {
    "EVALSTREAM_PROCESSOR__HOT_PATH": "false",
    "EVALSTREAM_PROCESSOR__BATCH_SIZE": "7",
    # The demo policy evaluates the stored minutes in process: its jobs show in /metrics.
    "EVALSTREAM_COLDPATH__SCHEDULE_IN_PROCESS": "true",
    "EVALSTREAM_COLDPATH__SCHEDULE_INTERVAL_S": "0.5",
    # Two processing worker processes: /metrics adds up what each of them reports.
    "EVALSTREAM_EMBEDDED__WORKERS": "2",
}
WHEN = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_match_the_store_and_readiness_follows_the_store(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    lines = [
        json.dumps({"app_id": f"a{i % 3}", "timestamp": WHEN, "trace_id": f"s{i}"})
        for i in range(40)
    ]
    lines += ["{not json", json.dumps({"app_id": "a1", "timestamp": WHEN}), "[1"]
    sent = subprocess.run(
        [sys.executable, "-m", "evalstream", "send", "-", "--data-dir", str(data_dir)],
        input="\n".join(lines).encode(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert sent.returncode == 0, sent.stderr.decode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_processor(
        data_dir, ENV, "--ingest", "--ingest-port", str(port), "--log-level", "INFO"
    )
    try:
        wait_until(lambda: answers(f"{url}/healthz"), timeout=60, what="the processor's port")
        posted = [
            httpx.post(
                f"{url}/api/telemetry",
                json={"events": [{"app_id": "b", "timestamp": WHEN, "trace_id": f"h{i}"}, *bad]},
                timeout=10,
            ).status_code
            for i, bad in enumerate([[], [], [{"app_id": "b"}]])
        ]
        assert posted == [202, 202, 207]

        def settled() -> bool:
            samples = _samples(url)
            telemetry, _ = store_contents(data_dir)
            # Ingest workers send their counts every half second: they arrive a little later.
            return (
                _value(samples, "evalstream_events_total", outcome="stored") == len(telemetry) == 43
                and _value(samples, "evalstream_ingest_requests_total", status="207") == 1
            )

        wait_until(settled, timeout=60, what="every event processed and counted", interval=0.1)
        samples = _samples(url)
        _, quarantine = store_contents(data_dir)
        # The processor quarantined the three bad lines of `send`; ingest quarantined its own
        # reject at the door (counted as a 207 answer, not as a processed event).
        assert _value(samples, "evalstream_events_total", outcome="quarantined") == 3
        assert len(quarantine) == 3 + 1
        by_code = {
            dict(labels)["code"]: value
            for (name, labels), value in samples.items()
            if name == "evalstream_quarantined_events_total"
        }
        assert sum(by_code.values()) == 3 and by_code.get("missing") == 1, by_code
        assert _value(samples, "evalstream_ingest_quarantined_events_total", code="missing") == 1
        assert _value(samples, "evalstream_ingest_requests_total", status="202") == 2
        assert _value(samples, "evalstream_ingest_requests_total", status="207") == 1
        assert _value(samples, "evalstream_partitions_owned") == DEFAULT_PARTITIONS
        assert _value(samples, "evalstream_batch_duration_seconds_count") >= 43 / 7
        assert all(
            _value(samples, "evalstream_partition_lag_events", partition=str(p)) == 0
            for p in range(DEFAULT_PARTITIONS)
        )

        wait_until(
            lambda: any(name == "evalstream_coldpath_jobs_total" for name, _ in _samples(url)),
            timeout=60,
            what="a cold-path job in the metrics",
            interval=0.2,
        )
        samples = _samples(url)
        assert _value(samples, "evalstream_coldpath_shards_total", outcome="failed") == 0
        assert _value(samples, "evalstream_coldpath_shards_total", outcome="succeeded") >= 1

        ready = httpx.get(f"{url}/readyz", timeout=10)
        assert (ready.status_code, ready.json()["status"]) == (200, "ready")
        away = data_dir / "store.db.away"
        (data_dir / "store.db").rename(away)
        try:
            unready = httpx.get(f"{url}/readyz", timeout=10)
            assert unready.status_code == 503
            assert unready.json()["status"] == "unready"
            assert any("store.db cannot be read" in p for p in unready.json()["problems"])
            assert httpx.get(f"{url}/healthz", timeout=10).status_code == 200
        finally:
            away.rename(data_dir / "store.db")
        again = httpx.get(f"{url}/readyz", timeout=10)
        assert (again.status_code, again.json()) == (
            200,
            {"status": "ready", "partitions": DEFAULT_PARTITIONS},
        )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()[-3000:]
    # The operator's count of quarantined inputs is the store's: the processor's and ingest's.
    stopped = re.search(r"stopped: .*\| (quarantined [^|]*) \|", output.decode())
    assert stopped is not None, output.decode()[-3000:]
    assert stopped[1] == "quarantined 4 (1 by ingest)"
