"""A running processor as an operator sees it: /metrics and the status line agree with the store,
/readyz tells what is wrong and recovers, /healthz answers."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from evalstream.settings import DEFAULT_PARTITIONS
from tests.integration.processor_harness import (
    KILL_ENV,
    answers,
    free_port,
    prepare,
    printed,
    simulated_bodies,
    start_processor,
    store_contents,
    wait_for_stored,
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

        # The schedule catches up on the last hours minute by minute, oldest first: the
        # windows before the events' are jobs of no shard, so wait for the events' window.
        wait_until(
            lambda: (
                _value(_samples(url), "evalstream_coldpath_shards_total", outcome="succeeded") >= 1
            ),
            timeout=60,
            what="the events' window evaluated by the cold path",
            interval=0.2,
        )
        samples = _samples(url)
        assert _value(samples, "evalstream_coldpath_jobs_total", policy="demo") >= 1
        assert _value(samples, "evalstream_coldpath_shards_total", outcome="failed") == 0

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


def _probe(kind: str) -> dict[str, int]:
    manifest = Path(__file__).parents[2] / "deploy" / "k8s" / "processor.yaml"
    (deployment,) = (
        doc for doc in yaml.safe_load_all(manifest.read_text()) if doc["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe: dict[str, int] = container[kind]
    return probe


def test_healthz_stays_up_under_load_and_says_503_in_the_probes_time_once_frozen(
    tmp_path: Path,
) -> None:
    """With ingest in a worker process (as the shipped manifest runs it), /healthz is 200 all
    through a backlog worked through in process, and a stopped processor is a 503 within the
    liveness probe's timeout (not a hanging request), 200 again once it goes on."""
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}/healthz"
    env = {
        **KILL_ENV,
        "EVALSTREAM_INGEST__WORKERS": "1",
        "EVALSTREAM_PROCESSOR__BATCH_SIZE": "1000",
    }
    process = start_processor(data_dir, env, "--ingest", "--ingest-port", str(port))
    probe_timeout_s = _probe("livenessProbe")["timeoutSeconds"]
    answered: list[int | str] = []
    busy = threading.Event()

    def poll() -> None:
        while busy.is_set():
            try:
                answered.append(httpx.get(url, timeout=probe_timeout_s).status_code)
            except httpx.HTTPError as exc:
                answered.append(repr(exc))

    try:
        wait_until(lambda: answers(url), timeout=60, what="the processor's port")
        busy.set()
        poller = threading.Thread(target=poll)
        poller.start()
        try:
            expected = prepare(data_dir, simulated_bodies(seed=3))
            wait_for_stored(data_dir, process, len(expected.telemetry) + len(expected.quarantine))
        finally:
            busy.clear()
            poller.join()
        assert len(answered) > 1 and set(answered) == {200}, answered

        os.kill(process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            frozen = httpx.get(url, timeout=probe_timeout_s)
            assert time.monotonic() - started < probe_timeout_s
            assert frozen.status_code == 503
            assert frozen.json()["problems"] == ["processor: no answer within 3 s"]
            # Readiness too answers within its probe's time: unready, not a hanging request.
            ready_timeout_s = _probe("readinessProbe")["timeoutSeconds"]
            started = time.monotonic()
            unready = httpx.get(url.replace("/healthz", "/readyz"), timeout=ready_timeout_s)
            assert time.monotonic() - started < ready_timeout_s
            assert unready.status_code == 503
            assert unready.json()["problems"] == ["processor: no answer within 6 s"]
        finally:
            os.kill(process.pid, signal.SIGCONT)
        wait_until(lambda: answers(url), timeout=30, what="/healthz 200 again")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode()[-3000:]


def test_a_full_disk_is_one_line_then_its_end_and_nothing_is_lost(tmp_path: Path) -> None:
    """The processor's writes fail as on a full disk (RLIMIT_FSIZE: EFBIG) for several retries:
    one line says so, without a traceback (one per partition and retry before), one says it
    is over, and every event is stored once the disk has room again."""
    data_dir = tmp_path / "data"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_processor(
        data_dir,
        {"EVALSTREAM_PROCESSOR__OPS_PORT": str(port), "EVALSTREAM_PROCESSOR__HOT_PATH": "false"},
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        # Started (its files open, its partitions owned): a data dir full at start is another
        # case (one line, exit 2).
        wait_until(lambda: answers(f"{url}/readyz"), timeout=60, what="the processor ready")
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (1, hard))
        expected = prepare(
            data_dir,
            [
                (
                    f"a{i % 3}",
                    json.dumps(
                        {"app_id": f"a{i % 3}", "timestamp": WHEN, "trace_id": f"f{i}"}
                    ).encode(),
                )
                for i in range(60)
            ],
        )

        def failed_for_a_while() -> bool:
            try:
                return _value(_samples(url), "evalstream_store_failures_total") >= 6
            except httpx.TransportError:
                return process.poll() is not None

        wait_until(failed_for_a_while, timeout=60, what="writes failing for a while", interval=0.1)
        assert process.poll() is None, printed(process)
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait_for_stored(data_dir, process, len(expected.telemetry))
    finally:
        resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (hard, hard))
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    text = output.decode()
    assert process.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    failing = re.findall(r"ERROR stream\.delivery: batches failing: (.*)", text)
    assert len(failing) == 1 and "SQLite: disk" in failing[0], text[-3000:]
    assert len(re.findall(r"batches succeed again, after \d+ failures", text)) == 1, text[-3000:]
