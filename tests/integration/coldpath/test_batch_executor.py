"""The Batch executor end to end on the local servers: `coldpath backfill --executor batch`
submits a job per window to the Batch test server, whose tasks really run `evalstream coldpath
run-shard` against the Cosmos server and the AMQP broker's Service Bus topic; results and breach
ids equal the local executor's for the same windows. A re-trigger finds the job it made."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.batch.aio import BatchClient
from azure.storage.blob.aio import BlobServiceClient
from prometheus_client.parser import text_string_to_metric_families

from coldpath.executors.batch import BatchExecutor, BatchMisconfigured, batch_client, wire_text
from coldpath.executors.batch_config import BatchSettings
from coldpath.executors.batch_status import JobStatus, TaskRecord, job_status
from coldpath.executors.inline import InlineExecutor
from coldpath.ports import JobReport
from coldpath.runner import ShardRunner
from coldpath.trigger import WindowChoice, plan
from common.errors import Misconfigured
from evalstream import wiring
from evalstream.coldpath_entry import plan_due, submit_manifests
from evalstream.settings import Settings
from schemas import EvaluationResult, JobManifest
from store.cosmos import CosmosStore
from tests.emulators.batch_fixtures import BatchServer
from tests.emulators.fault_proxy import FaultProxy
from tests.integration.coldpath.batch_harness import (
    START,
    AzureColdpath,
    comparable,
    documents,
    ensure_pool,
    executor_settings,
    one_off_manifest,
    run_async,
    stage_nowhere,
)
from tests.unit.coldpath.fakes import CATALOGUE, RecordingPublisher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOURS = 2


@pytest.fixture
def cold(
    tmp_path: Path, cosmos_server: Any, amqp_broker: Any, azurite: Any, batch_server: BatchServer
) -> Iterator[AzureColdpath]:
    asyncio.run(ensure_pool(batch_server))
    harness = AzureColdpath(tmp_path, cosmos_server, amqp_broker, azurite, batch_server)
    harness.group_size = 6
    harness.apps = 6
    yield harness
    asyncio.run(harness.drop())


def backfill(cold: AzureColdpath, executor: str, env: dict[str, str]) -> str:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "evalstream",
            "coldpath",
            "backfill",
            "--from",
            START.isoformat(),
            "--to",
            (START + timedelta(hours=HOURS)).isoformat(),
            "--executor",
            executor,
        ],
        env={**os.environ, **env},
        capture_output=True,
        timeout=240,
        check=False,
    )
    output = process.stderr.decode() + process.stdout.decode()
    assert process.returncode == 0, output
    return output


def test_batch_jobs_give_the_local_executors_results_and_breaches(cold: AzureColdpath) -> None:
    asyncio.run(cold.seed(documents(cold.name, apps=6, hours=HOURS)))
    # The Batch test server is the session's: other tests' jobs are counted before this one.
    jobs_before = cold.batch.stats()["requests"].get("POST /jobs", 0)

    backfill(cold, "local", cold.env("local"))
    result_files = {
        "EVALSTREAM_AZURE__BATCH__STAGING__RESULT_FILES": "true",
        "EVALSTREAM_AZURE__BATCH__STAGING__CONNECTION_STRING": cold.azurite.connection_string,
        "EVALSTREAM_AZURE__BATCH__STAGING__CONTAINER": cold.name,
    }
    output = backfill(cold, "batch", cold.trigger_env("batch", **result_files))
    assert output.count("manifest ") == HOURS, output

    local, on_batch = asyncio.run(cold.results("local")), asyncio.run(cold.results("batch"))
    # 6 apps × (speed: 2 metrics + health: 1 metric) × 2 windows
    assert len(local) == 6 * 3 * HOURS
    assert comparable(on_batch) == comparable(local)
    # One result file per shard (12 units, 6 a shard: two per window), exactly their results.
    files = asyncio.run(result_files_of(cold))
    assert sorted(name.rsplit("/", 1)[1] for name in files) == sorted(
        ["shard-00000.jsonl", "shard-00001.jsonl"] * HOURS
    )
    from_files = [
        EvaluationResult.model_validate_json(line)
        for text in files.values()
        for line in text.splitlines()
    ]
    assert sorted(r.id for r in from_files) == sorted(r.id for r in on_batch)
    assert comparable(from_files) == comparable(on_batch)
    assert {r.status for r in local} >= {"ok", "warning", "critical"}
    breaches = cold.breach_ids("local")
    assert breaches and cold.breach_ids("batch") == breaches
    assert cold.publishes("batch") == (len(breaches), 0)

    # Each window's job is named after its manifest and every shard ran as its own task.
    stats = cold.batch.stats()["requests"]
    assert stats["POST /jobs"] - jobs_before == HOURS
    # Triggering again finds every unit done: nothing is submitted.
    backfill(cold, "batch", cold.trigger_env("batch"))
    assert cold.batch.stats()["requests"]["POST /jobs"] - jobs_before == HOURS


async def result_files_of(cold: AzureColdpath) -> dict[str, str]:
    service = BlobServiceClient.from_connection_string(cold.azurite.connection_string)
    async with service:
        container = service.get_container_client(cold.name)
        files = {}
        async for blob in container.list_blobs(name_starts_with="results/"):
            stream = await container.download_blob(blob.name)
            files[blob.name] = (await stream.readall()).decode()
        return files


def test_a_second_run_of_a_manifest_finds_its_job(cold: AzureColdpath) -> None:
    cold.apps = 2
    cold.group_size = 2
    asyncio.run(cold.seed(documents(cold.name, apps=2, hours=1)))
    settings = cold.settings("again")

    async def scenario() -> tuple[Any, Any, list[str]]:
        async with wiring.evaluation_store(settings) as store:
            (manifest,) = await plan(
                settings.coldpath.policies,
                WindowChoice(
                    last=False, window=None, range_start=START, range_end=START + timedelta(hours=1)
                ),
                store,
                now=START + timedelta(days=1),
                group_size=settings.coldpath.group_size,
                code_version=wiring.code_version(),
            )
        executor = wiring.executor(settings, "batch")
        assert isinstance(executor, BatchExecutor)
        first = await executor.run(manifest)
        second = await executor.run(manifest)
        async with batch_client(settings.azure.batch) as client:
            tasks = [task.id async for task in client.list_tasks(manifest.id)]
        return first, second, tasks

    first, second, tasks = asyncio.run(scenario())
    assert first.ok and second.ok
    assert first.succeeded == second.succeeded == (0, 1)
    assert tasks == ["shard-000000", "shard-000001"]


UNIT_DONE = r"coldpath\.runner: unit \S+ done"


async def _plan_one(settings: Settings) -> JobManifest:
    async with wiring.evaluation_store(settings) as store:
        (manifest,) = await plan(
            settings.coldpath.policies,
            WindowChoice(last=False, range_start=START, range_end=START + timedelta(hours=1)),
            store,
            now=START + timedelta(days=1),
            group_size=settings.coldpath.group_size,
            code_version=wiring.code_version(),
        )
    return manifest


async def _reference(cold: AzureColdpath, settings: Settings, manifest: JobManifest) -> Any:
    """The same manifest evaluated in this process, uninterrupted, breaches recorded."""
    publisher = RecordingPublisher()
    async with (
        CosmosStore(cold.cosmos.endpoint, cold.cosmos.key, database=cold.name) as telemetry,
        cold.evaluation_store("reference") as evaluations,
    ):
        runner = ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=publisher,
            catalogue=CATALOGUE,
            apps=settings.apps,
        )
        report = await InlineExecutor(runner).run(manifest)
    assert report.ok
    return publisher


def test_kills_preemptions_and_transient_errors_change_nothing(
    cold: AzureColdpath, cosmos_fault_proxy: FaultProxy
) -> None:
    cold.apps, cold.group_size = 8, 3
    cold.cosmos_endpoint = cosmos_fault_proxy.endpoint  # the tasks' way to Cosmos
    asyncio.run(cold.seed(documents(cold.name, apps=8, hours=1)))
    settings = cold.settings("faults")
    manifest = asyncio.run(_plan_one(settings))
    assert manifest.shard_count == 6
    reference = asyncio.run(_reference(cold, settings, manifest))
    assert reference.published

    batch, job = cold.batch, manifest.id
    batch.reset_faults()
    # Six points: tasks killed or their node preempted after their 1st or 2nd unit was done,
    # shard 0 twice (its retry is killed again).
    batch.kill_task(job, task="shard-000000", pattern=UNIT_DONE, after_lines=1)
    batch.kill_task(job, task="shard-000000", pattern=UNIT_DONE, after_lines=1)
    batch.kill_task(job, task="shard-000001", pattern=UNIT_DONE, after_lines=2, preempt=True)
    batch.kill_task(job, task="shard-000002", pattern=UNIT_DONE, after_lines=1, preempt=True)
    batch.kill_task(job, task="shard-000003", pattern=UNIT_DONE, after_lines=2)
    batch.kill_task(job, task="shard-000004", pattern=UNIT_DONE, after_lines=1, preempt=True)
    batch.reject_collections_over(2_000)
    batch.fail_requests(500, 1, match=r"/jobs$", method="POST")
    batch.fail_requests(503, 2, match="addtaskcollection")
    batch.fail_requests(429, 1, match=f"/jobs/{job}$", method="GET", retry_after_s=1)
    cosmos_fault_proxy.throttle(4, methods={"POST"})
    cosmos_fault_proxy.unavailable(1)

    async def run() -> tuple[JobReport, list[TaskRecord]]:
        executor = wiring.executor(settings, "batch")
        assert isinstance(executor, BatchExecutor)
        report = await executor.run(manifest)
        assert executor.last_submit.split == 1 and executor.last_submit.tasks_added == 6
        async with batch_client(settings.azure.batch) as client:
            return report, await executor.records(client, job)

    report, tasks = asyncio.run(run())
    assert report.ok, report.failed
    stats = batch.stats()
    assert stats["pending_kills"] == 0
    assert stats["injected"] == {
        "kill": 3,
        "preempt": 3,
        "collection_size": 1,
        "http_500": 1,
        "http_503": 2,
        "http_429": 1,
    }
    figures = job_status(job, "completed", tasks)
    assert (figures.retries, figures.requeues, figures.failure_rate) == (3, 3, 0.0)
    assert figures.succeeded == 6 and set(figures.run_time_s) == {50, 90, 99}
    assert cosmos_fault_proxy.injected("throttle") == 4
    assert cosmos_fault_proxy.injected("unavailable") == 1

    results = asyncio.run(cold.results("faults"))
    assert len(results) == 8 * 3 == len({r.id for r in results})
    assert comparable(results) == comparable(asyncio.run(cold.results("reference")))
    # Every publish the topic received, duplicates included: each breach exactly once.
    assert cold.publishes("faults") == (len(reference.published), 0)
    assert cold.breach_ids("faults") == sorted(reference.published)


def test_a_task_that_always_fails_ends_failed_with_its_error(cold: AzureColdpath) -> None:
    cold.apps, cold.group_size = 2, 4
    asyncio.run(cold.seed(documents(cold.name, apps=2, hours=1)))
    settings = cold.settings("failing", EVALSTREAM_COLDPATH__CATALOGUE="missing.module:CATALOGUE")
    batch_settings = settings.azure.batch.model_copy(update={"max_task_retry_count": 1})
    settings = settings.model_copy(
        update={"azure": settings.azure.model_copy(update={"batch": batch_settings})}
    )
    manifest = asyncio.run(_plan_one(settings))

    report = asyncio.run(wiring.executor(settings, "batch").run(manifest))

    assert not report.ok and report.succeeded == ()
    (error,) = report.failed.values()
    assert "task shard-000000 failed (exit code 2, 1 retries, 0 requeues)" in error
    assert "coldpath.catalogue: cannot load 'missing.module:CATALOGUE'" in error

    shown = subprocess.run(
        [sys.executable, "-m", "evalstream", "coldpath", "status", manifest.id],
        env={**os.environ, **cold.trigger_env("failing")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "failure rate: 100.0%" in shown.stdout
    assert "failed: shard-000000 exit code 2: FailureExitCode" in shown.stdout

    # The same figures exported: printed, written for a textfile collector, pushed to a gateway.
    textfile = cold.tmp / "coldpath.prom"
    with recording_http_server() as (gateway, received):
        exported = subprocess.run(
            [sys.executable, "-m", "evalstream", "coldpath", "status", manifest.id, "--metrics",
             "--textfile", str(textfile), "--push-gateway", gateway],
            env={**os.environ, **cold.trigger_env("failing")},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    ((method, path, body),) = received
    assert (method, path) == ("PUT", f"/metrics/job/evalstream_coldpath/job_id/{manifest.id}")
    for text in (exported.stdout, textfile.read_text(), body):
        values = {
            (sample.name, sample.labels.get("result", sample.labels.get("state"))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.labels["job_id"] == manifest.id
        }
        assert values[("evalstream_coldpath_batch_failure_ratio", None)] == 1.0
        assert values[("evalstream_coldpath_batch_tasks_completed", "failure")] == 1
        assert values[("evalstream_coldpath_batch_tasks_completed", "success")] == 0
        assert values[("evalstream_coldpath_batch_task_retries", None)] == 1


@contextlib.contextmanager
def recording_http_server() -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    """A stand-in Pushgateway: records (method, path, body) of every request, answers 200."""
    received: list[tuple[str, str, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            received.append(("PUT", self.path, self.rfile.read(length).decode()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_the_durable_hand_off_of_heavy_manifests_runs_them_on_batch(cold: AzureColdpath) -> None:
    """What the Durable orchestration's heavy-policy activity does (``submit_manifests`` with the
    Batch executor: submitted, not followed) gives the local executor's results."""
    cold.apps, cold.group_size = 2, 2
    asyncio.run(cold.seed(documents(cold.name, apps=2, hours=1)))
    settings = cold.settings("durable")
    planned = asyncio.run(plan_due(settings, now=START + timedelta(hours=1, minutes=5)))
    assert [p.window.start for p in planned] == [START]

    reports = asyncio.run(submit_manifests(settings, [p.id for p in planned], executor="batch"))
    assert [report.manifest_id for report in reports] == [p.id for p in planned]

    async def finished(job: str) -> JobStatus:
        executor = wiring.batch_executor(settings)
        async with batch_client(settings.azure.batch) as client, asyncio.timeout(120):
            while True:
                status = await executor.status(client, job)
                if status.tasks and status.by_state.get("completed") == status.tasks:
                    return status
                await asyncio.sleep(0.2)

    for manifest in planned:
        status = asyncio.run(finished(manifest.id))
        assert (status.succeeded, status.failed) == (manifest.shards, 0)

    backfill(cold, "local", cold.env("local"))
    local = [r for r in asyncio.run(cold.results("local")) if r.window.start == START]
    on_batch = asyncio.run(cold.results("durable"))
    assert len(on_batch) == 2 * 3
    assert comparable(on_batch) == comparable(local)


def test_a_pool_that_does_not_exist_is_one_clear_error(batch_server: BatchServer) -> None:
    # Batch accepts a job on a missing pool and never runs its tasks: followed, the trigger
    # waited for ever; not followed, the window was never evaluated, without a word.
    settings = executor_settings(batch_server, pool_id=f"no-such-pool-{uuid.uuid4().hex[:6]}")
    manifest = one_off_manifest(1)

    async def scenario() -> None:
        async with asyncio.timeout(30):
            await BatchExecutor(settings, stage=stage_nowhere).run(manifest)

    with pytest.raises(BatchMisconfigured, match=r"pool 'no-such-pool-.*' does not exist") as error:
        run_async(scenario())
    assert isinstance(error.value, Misconfigured)
    assert "\n" not in str(error.value)
    # Refused before anything was made.
    assert manifest.id not in run_async(_job_ids(settings))


async def _job_ids(settings: BatchSettings) -> list[str]:
    async with batch_client(settings) as client:
        return [job.id async for job in client.list_jobs()]


def test_a_job_ends_once_every_task_is_added_not_before(batch_server: BatchServer) -> None:
    # Batch ends a job with "terminate when all tasks complete" as soon as they are, and a job
    # without tasks has them all complete: one created so ended before its first chunk (or, on
    # a fast shard, between two chunks) and refused the rest (409 JobCompleted).
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server)
    manifest = one_off_manifest(3)

    async def scenario() -> tuple[JobReport, Any]:
        report = await BatchExecutor(settings, stage=stage_nowhere).run(manifest)
        async with batch_client(settings) as client:
            return report, await client.get_job(manifest.id)

    report, job = run_async(scenario())

    assert report.failed == {}
    assert sorted(report.succeeded) == [0, 1, 2]
    assert wire_text(job.state) == "completed"
    assert job.execution_info.termination_reason == "AllTasksComplete"


def test_a_failed_task_s_huge_stderr_is_read_from_its_end_only(
    batch_server: BatchServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The report quotes the end of a failed task's stderr. Read whole, 2 MB here (a task
    # logging in a loop makes gigabytes) went into the trigger's memory (512 MiB on AKS).
    run_async(ensure_pool(batch_server))
    settings = executor_settings(batch_server).model_copy(
        update={
            "command": "head -c 2000000 /dev/zero >&2; echo the-last-words >&2; false",
            "max_task_retry_count": 0,
        }
    )
    downloaded: list[int] = []
    original = BatchClient.download_task_file

    async def counting(self: BatchClient, *args: Any, **kwargs: Any) -> Any:
        chunks = await original(self, *args, **kwargs)

        async def counted() -> Any:
            async for chunk in chunks:
                downloaded.append(len(chunk))
                yield chunk

        return counted()

    monkeypatch.setattr(BatchClient, "download_task_file", counting)

    report = run_async(BatchExecutor(settings, stage=stage_nowhere).run(one_off_manifest(1)))

    assert list(report.failed) == [0]
    assert report.failed[0].endswith("the-last-words")
    assert 0 < sum(downloaded) <= settings.stderr_excerpt_bytes
