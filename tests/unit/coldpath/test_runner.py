"""The shard runner over the SQLite stores, on a small fixed dataset with exact expectations."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from coldpath.exceptions import PolicyConfigError
from coldpath.policies.catalogue import CATALOGUE as BUILT_IN_CATALOGUE
from coldpath.runner import ShardRunner
from coldpath.shards import build_manifest
from schemas import (
    AppDirectory,
    Breach,
    EvaluationPolicy,
    EvaluationResult,
    JobManifest,
    Severity,
    TelemetryDocument,
    Window,
)
from schemas.breach import breach_id_for
from store.sqlite import SqliteStore
from store.sqlite_evaluations import SqliteEvaluationStore
from tests.unit.coldpath.fakes import CATALOGUE, RecordingPublisher, doc

START = datetime(2026, 3, 1, 10, tzinfo=UTC)
WINDOW = Window(start=START, end=START + timedelta(hours=1))
POLICY = EvaluationPolicy.model_validate(
    {
        "name": "quality",
        "version": 3,
        "window": "PT1H",
        "min_sample_size": 10,
        "metrics": [
            {
                "metric": "latency",
                "thresholds": {"p95": {"warning": {"max": 300}, "critical": {"max": 1000}}},
            },
            {"metric": "errors", "thresholds": {"rate": {"warning": {"max": 0.1}}}},
            {"metric": "shift", "thresholds": {"shift": {"critical": {"max": 50}}}},
        ],
    }
)
# app "a": 40 documents, latencies 10..400 (p95 above the warning bound), 5 errors (12.5 %),
# one late-flagged; the hour before: 20 documents at 100 ms.
A_LATENCIES = [10.0 * (n + 1) for n in range(40)]


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteEvaluationStore]]:
    path = tmp_path / "store.db"
    documents = [
        doc(
            "a",
            START + timedelta(seconds=60 * n),
            latency_ms=value,
            error=n % 8 == 0,
            number=n,
            late=n == 3,
        )
        for n, value in enumerate(A_LATENCIES)
    ]
    documents += [
        doc("a", START - timedelta(minutes=n + 1), latency_ms=100.0, number=100 + n)
        for n in range(20)
    ]
    # Outside the window on both sides: never read.
    documents += [doc("a", WINDOW.end, latency_ms=1e9, number=999)]
    # app "b": three documents (too few); app "c": 12 without latency, 12 with.
    documents += [doc("b", START + timedelta(minutes=n), number=n) for n in range(3)]
    documents += [
        doc("c", START + timedelta(minutes=n), latency_ms=None if n % 2 else 50.0, number=n)
        for n in range(24)
    ]
    async with SqliteStore(path) as telemetry, SqliteEvaluationStore(path) as evaluations:
        await telemetry.write(documents, [])
        yield telemetry, evaluations


def manifest(run: int = 0) -> JobManifest:
    return build_manifest(
        WINDOW, [POLICY], ["a", "b", "c", "d"], group_size=2, code_version="test", run=run
    )


def runner(
    stores: tuple[SqliteStore, SqliteEvaluationStore], bus: RecordingPublisher
) -> ShardRunner:
    telemetry, evaluations = stores
    return ShardRunner(
        telemetry=telemetry,
        evaluations=evaluations,
        publisher=bus,
        catalogue=CATALOGUE,
        apps=AppDirectory(),
        page_size=7,
    )


async def run_all(shard_runner: ShardRunner, job: JobManifest) -> None:
    for index in range(job.shard_count):
        await shard_runner.run_shard(job, index)


async def test_values_statuses_and_breaches_are_exact(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    bus = RecordingPublisher()
    await run_all(runner(stores, bus), manifest())
    results = {(r.app_id, r.metric): r for r in await stores[1].results()}
    assert len(results) == 4 * 3

    latency = results["a", "latency"]
    assert latency.values["p95"] == pytest.approx(float(np.percentile(A_LATENCIES, 95)))
    assert latency.sample_size == 40 and latency.status == "warning"
    assert latency.pk == "a:2026-03-01" and latency.policy_version == 3
    errors = results["a", "errors"]
    assert errors.values["rate"] == 5 / 40 and errors.status == "warning"
    shift = results["a", "shift"]
    assert shift.values["shift"] == pytest.approx(np.mean(A_LATENCIES) - 100.0)
    assert shift.status == "critical"

    expected = {
        breach_id_for("a", "quality:latency", "p95", WINDOW.key): Severity.WARNING,
        breach_id_for("a", "quality:errors", "rate", WINDOW.key): Severity.WARNING,
        breach_id_for("a", "quality:shift", "shift", WINDOW.key): Severity.CRITICAL,
    }
    assert {b.breach_id: b.severity for b in bus.published.values()} == expected
    assert all(b.kind == "evaluation" and b.source == "cold" for b in bus.published.values())


async def test_too_few_or_no_documents_are_insufficient_data_without_breach(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    bus = RecordingPublisher()
    await run_all(runner(stores, bus), manifest())
    for app_id, count in (("b", 3), ("d", 0)):
        for result in await stores[1].results(app_id=app_id):
            assert result.status == "insufficient_data", result
            assert result.sample_size == count
            assert "fewer than the minimum 10" in result.reason or result.metric == "shift"
    assert {b.app_id for b in bus.published.values()} == {"a"}


async def test_missing_optional_fields_are_counted_not_fatal(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    await run_all(runner(stores, RecordingPublisher()), manifest())
    results = {r.metric: r for r in await stores[1].results(app_id="c")}
    assert results["latency"].sample_size == 12 and results["latency"].values["p95"] == 50.0
    assert results["errors"].sample_size == 24 and results["errors"].status == "ok"


async def test_rerun_skips_done_units_and_a_forced_rerun_changes_nothing_but_run_fields(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    bus = RecordingPublisher()
    shard_runner = runner(stores, bus)
    await run_all(shard_runner, manifest())
    first = {r.id: r for r in await stores[1].results()}
    calls = bus.calls
    outcomes = await shard_runner.run_shard(manifest(), 0)
    assert all(outcome.skipped for outcome in outcomes) and bus.calls == calls

    await run_all(shard_runner, manifest(run=1))
    second = {r.id: r for r in await stores[1].results()}
    assert second.keys() == first.keys()
    ignored = {"computed_at", "manifest_id", "run"}
    for key, result in first.items():
        assert second[key].model_dump(exclude=ignored) == result.model_dump(exclude=ignored)
        assert second[key].run == 1
    assert len(bus.published) == 3


async def test_manifests_are_staged_once_and_progress_is_per_manifest(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    evaluations = stores[1]
    job = manifest()
    await evaluations.stage_manifest(job)
    await evaluations.stage_manifest(job)
    assert await evaluations.load_manifest(job.id) == job
    assert await evaluations.load_manifest("nope") is None
    assert await evaluations.app_ids(WINDOW.start, WINDOW.end) == ["a", "b", "c"]
    await runner(stores, RecordingPublisher()).run_shard(job, 0)
    assert await evaluations.done_units(job.id) == {u.key for u in job.shard(0)}
    assert await evaluations.done_units(manifest(run=1).id) == set()


async def test_values_beyond_a_double_are_stored_and_judged_as_the_largest_double(
    tmp_path: Path,
) -> None:
    # Latencies at the largest double: their mean overflows. What is stored and what breaches
    # is the same finite number, and the breach reads back from its JSON.
    largest = sys.float_info.max
    documents = [
        doc("a", START + timedelta(minutes=n), latency_ms=largest if n % 2 else 1.0, number=n)
        for n in range(20)
    ]
    path = tmp_path / "store.db"
    bus = RecordingPublisher()
    async with SqliteStore(path) as telemetry, SqliteEvaluationStore(path) as evaluations:
        await telemetry.write(documents, [])
        policy = EvaluationPolicy.model_validate(
            {
                "name": "edge",
                "window": "PT1H",
                "min_sample_size": 10,
                "metrics": [
                    {
                        "metric": "latency",
                        "thresholds": {"mean": {"warning": {"max": 300}}},
                    }
                ],
            }
        )
        job = build_manifest(WINDOW, [policy], ["a"], group_size=1, code_version="t", run=0)
        shard_runner = ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=bus,
            catalogue=BUILT_IN_CATALOGUE,  # the shipped latency metric
            apps=AppDirectory(),
        )
        await run_all(shard_runner, job)
        (result,) = await evaluations.results()
    assert result.values["mean"] == largest and result.status == "warning"
    (breach,) = bus.published.values()
    assert breach.observed == largest
    assert Breach.model_validate_json(breach.model_dump_json()) == breach


async def evaluate_builtin(
    tmp_path: Path, metric: Mapping[str, object], documents: list[TelemetryDocument]
) -> tuple[EvaluationResult, RecordingPublisher]:
    """``metric`` of a one-metric policy over ``documents`` of app "a", with the shipped
    catalogue: the one result and what was published."""
    path = tmp_path / "store.db"
    bus = RecordingPublisher()
    policy = EvaluationPolicy.model_validate(
        {"name": "edge", "window": "PT1H", "min_sample_size": 5, "metrics": [metric]}
    )
    job = build_manifest(WINDOW, [policy], ["a"], group_size=1, code_version="t", run=0)
    async with SqliteStore(path) as telemetry, SqliteEvaluationStore(path) as evaluations:
        await telemetry.write(documents, [])
        shard_runner = ShardRunner(
            telemetry=telemetry,
            evaluations=evaluations,
            publisher=bus,
            catalogue=BUILT_IN_CATALOGUE,
            apps=AppDirectory(),
        )
        await run_all(shard_runner, job)
        (result,) = await evaluations.results()
    return result, bus


def scored(n: int, scores: dict[str, float], *, error: bool = False) -> TelemetryDocument:
    document = doc("a", START + timedelta(minutes=n), number=n, error=error)
    return document.model_copy(update={"scores": scores})


async def test_a_rate_of_an_error_type_that_did_not_occur_is_judged_as_zero(
    tmp_path: Path,
) -> None:
    metric = {
        "metric": "errors",
        "params": {"types": ["timeout"]},
        "thresholds": {"rate.timeout": {"warning": {"max": 0.1}}},
    }
    result, bus = await evaluate_builtin(tmp_path, metric, [scored(n, {}) for n in range(10)])
    assert result.values["rate.timeout"] == 0.0
    assert (result.status, result.reason) == ("ok", "")
    assert not bus.published


async def test_a_thresholded_value_the_window_left_undefined_is_insufficient_data(
    tmp_path: Path,
) -> None:
    # No document carried a toxicity score: its mean is not 0 and the bound did not hold;
    # it could not be judged, and the status says so instead of "ok".
    metric = {"metric": "scores", "thresholds": {"toxicity.mean": {"warning": {"max": 0.5}}}}
    documents = [scored(n, {"relevance": 0.9}) for n in range(10)]
    result, bus = await evaluate_builtin(tmp_path, metric, documents)
    assert result.status == "insufficient_data"
    assert result.reason == "not judged, no value in this window: threshold on toxicity.mean"
    assert not bus.published


async def test_a_breach_is_still_reported_beside_an_unjudged_threshold(tmp_path: Path) -> None:
    metric = {
        "metric": "scores",
        "params": {"names": ["relevance", "toxicity"]},
        "thresholds": {
            "relevance.mean": {"warning": {"min": 0.95}},
            "toxicity.mean": {"warning": {"max": 0.5}},
        },
    }
    documents = [scored(n, {"relevance": 0.9}) for n in range(10)]
    result, bus = await evaluate_builtin(tmp_path, metric, documents)
    (breach,) = bus.published.values()
    assert breach.detector == "relevance.mean" and breach.severity is Severity.WARNING
    assert result.status == "warning"
    assert result.reason == (
        f"{breach.message}; not judged, no value in this window: threshold on toxicity.mean"
    )


async def test_a_manifest_judging_a_value_no_metric_reports_is_refused_before_any_result(
    stores: tuple[SqliteStore, SqliteEvaluationStore],
) -> None:
    # A manifest file (run-shard --manifest file.json) or one staged under other settings
    # brings its own policies: they are checked like the settings' own.
    typo = POLICY.model_copy(
        update={
            "metrics": (
                POLICY.metrics[0].model_copy(
                    update={"thresholds": {"p959": POLICY.metrics[0].thresholds["p95"]}}
                ),
                *POLICY.metrics[1:],
            )
        }
    )
    job = build_manifest(WINDOW, [typo], ["a"], group_size=1, code_version="t", run=0)
    bus = RecordingPublisher()
    with pytest.raises(PolicyConfigError) as caught:
        await runner(stores, bus).run_shard(job, 0)
    assert str(caught.value).startswith(
        f"manifest {job.id} policies[0].metrics[0].thresholds: policy 'quality', metric "
        "'latency' has no value 'p959' to judge (its values: p95, mean)"
    )
    assert await stores[1].results() == [] and not bus.published
    assert await stores[1].done_units(job.id) == set()
