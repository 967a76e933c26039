"""Must-show 4: the cold path's function app against the embedded (SQLite) store.

The timer function is invoked with a ``func.TimerRequest`` and evaluates the due window of every
policy; the Durable orchestrator is driven by ``durable_replay.ReplayHost`` (history replay,
episode by episode, like the extension) through the plan, the fan-out of one activity per light
(app_id, policy) unit, a unit that fails once and succeeds on retry, a unit that fails every
attempt, the heavy policy's manifest handed to its executor, and the fan-in summary. Activities
really run units: results, progress and breaches land in the SQLite store and bus.

Run: .venv/bin/python -m pytest deploy/functions
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import azure.durable_functions as df
import azure.functions as func
import function_app
import pytest
from azure.functions.timer import TimerRequest
from durable_replay import ReplayHost

from coldpath.exceptions import ColdpathError
from coldpath.windows import last_due
from common.sqlite import sqlite3
from evalstream.coldpath_entry import UnitReport, evaluate_unit
from evalstream.settings import load_settings
from schemas import TelemetryDocument, Unit
from store.sqlite import SqliteStore
from tests.unit.coldpath.fakes import doc

CONFIG = """
[coldpath]
catalogue = "tests.unit.coldpath.fakes:CATALOGUE"
group_size = 4

[[coldpath.policies]]
name = "speed"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = { p95 = { warning = { max = 400.0 }, critical = { max = 800.0 } } }

[[coldpath.policies]]
name = "health"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
[[coldpath.policies.metrics]]
metric = "errors"
thresholds = { rate = { warning = { max = 0.1 }, critical = { max = 0.3 } } }

[[coldpath.policies]]
name = "deep"
window = "PT1H"
lateness = "PT0S"
min_sample_size = 10
compute_class = "heavy"
[[coldpath.policies.metrics]]
metric = "latency"
thresholds = { p95 = { warning = { max = 500.0 } } }
"""
APPS = ("a", "b", "c")  # a healthy, b slow (900 ms), c failing (40 % errors)
LIGHT = ("health", "speed")
START = datetime(2026, 3, 1, 10, tzinfo=UTC)
# Due at START + 1 h (lateness 0): the orchestration starting then evaluates [10:00, 11:00).
ORCHESTRATION_START = START + timedelta(hours=1, minutes=2)


def documents(hour: datetime) -> list[TelemetryDocument]:
    """20 documents per app in the hour starting at ``hour``; the same figures every hour."""
    found = []
    for app_id in APPS:
        for n in range(20):
            found.append(
                doc(
                    app_id,
                    hour + timedelta(minutes=3 * n),
                    latency_ms=900.0 if app_id == "b" else 100.0 + n,
                    error=app_id == "c" and n % 5 < 2,
                    number=n,
                )
            )
    return found


def seed(data_dir: Path, hours: list[datetime]) -> None:
    async def write() -> None:
        async with SqliteStore(data_dir / "store.db") as store:
            await store.write([d for hour in hours for d in documents(hour)], [])

    asyncio.run(write())


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """App settings of the function host: the config file, the embedded data dir, and the heavy
    policies' executor (inline here; the same hand-off to the Batch test server is
    tests/integration/coldpath/test_batch_executor.py::test_the_durable_hand_off_of_heavy_manifests_runs_them_on_batch)."""
    import os

    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    config = tmp_path / "evalstream.toml"
    config.write_text(CONFIG)
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("EVALSTREAM_CONFIG", str(config))
    monkeypatch.setenv("EVALSTREAM_EMBEDDED__DATA_DIR", str(data))
    monkeypatch.setenv(function_app.HEAVY_EXECUTOR_SETTING, "inline")
    yield data


def results(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Stored results by id."""
    connection = sqlite3.connect(data_dir / "store.db")
    try:
        rows = connection.execute("SELECT doc FROM evaluations").fetchall()
    finally:
        connection.close()
    found = {}
    for (text,) in rows:
        result = json.loads(text)
        found[result["id"]] = result
    return found


def published(data_dir: Path) -> dict[str, int]:
    """Messages on the embedded bus's ``all`` subscription, by message id."""
    connection = sqlite3.connect(data_dir / "alerts.db")
    try:
        rows = connection.execute(
            "SELECT message_id, COUNT(*) FROM messages WHERE subscription = 'all' "
            "GROUP BY message_id"
        ).fetchall()
    finally:
        connection.close()
    return dict(rows)


def statuses(found: dict[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    return {(r["app_id"], r["policy"]): r["status"] for r in found.values()}


# The host indexes the app once (a second get_functions() refuses the names as duplicates).
INDEXED = {str(f.get_function_name()): f for f in function_app.app.get_functions()}
FUNCTIONS = {name: f.get_user_function() for name, f in INDEXED.items()}

EXPECTED_STATUSES = {
    ("a", "speed"): "ok",
    ("b", "speed"): "critical",
    ("c", "speed"): "ok",
    ("a", "health"): "ok",
    ("b", "health"): "ok",
    ("c", "health"): "critical",
    ("a", "deep"): "ok",
    ("b", "deep"): "warning",
    ("c", "deep"): "ok",
}


# --- the app --------------------------------------------------------------------------------


def test_the_app_registers_the_timer_the_orchestration_and_its_activities() -> None:
    assert isinstance(function_app.app, func.FunctionApp)
    functions = INDEXED
    assert set(functions) == {
        "coldpath_timer",
        "coldpath_durable_timer",
        function_app.ORCHESTRATOR,
        function_app.PLAN,
        function_app.EVALUATE_UNIT,
        function_app.SUBMIT_HEAVY,
    }
    timer = json.loads(functions["coldpath_timer"].get_function_json())
    (trigger,) = [b for b in timer["bindings"] if b["type"] == "timerTrigger"]
    # No app setting in this process: the default schedule, every five minutes.
    assert trigger["schedule"] == function_app.DEFAULT_SCHEDULE == "0 */5 * * * *"
    durable = json.loads(functions["coldpath_durable_timer"].get_function_json())
    assert {b["type"] for b in durable["bindings"]} == {"timerTrigger", "durableClient"}


def test_local_settings_example_loads_into_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    example = json.loads((Path(__file__).parent / "local.settings.json.example").read_text())
    values = example["Values"]
    assert values[function_app.SCHEDULE_SETTING] == function_app.DEFAULT_SCHEDULE
    for key in list(os.environ):
        if key.startswith("EVALSTREAM_"):
            monkeypatch.delenv(key)
    for key, value in values.items():
        if key.startswith("EVALSTREAM_") and key != "EVALSTREAM_CONFIG":
            monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.backend == "azure"
    assert settings.azure.batch.account_url


# --- the timer ------------------------------------------------------------------------------


def timer_function() -> Any:
    """The timer's user function as the worker calls it (the decorators return builders)."""
    return FUNCTIONS["coldpath_timer"]


async def test_timer_function_evaluates_the_due_window_once(data_dir: Path) -> None:
    now = datetime.now(UTC)
    # Every hour around now: whichever window is due when the function runs has its data.
    hour = now.replace(minute=0, second=0, microsecond=0)
    await asyncio.to_thread(seed, data_dir, [hour + timedelta(hours=h) for h in range(-3, 2)])

    await timer_function()(TimerRequest(past_due=True))

    first = results(data_dir)
    windows = {r["window"]["start"] for r in first.values()}
    assert len(windows) == 1
    (window,) = windows
    due = last_due(load_settings().coldpath.policies[0], now)
    assert datetime.fromisoformat(window) in {due.start, due.start + timedelta(hours=1)}
    assert statuses(first) == EXPECTED_STATUSES
    breaches = published(data_dir)
    assert len(breaches) == 3 and set(breaches.values()) == {1}

    # A second tick finds the window's manifest done: nothing is evaluated again (a re-run
    # would rewrite computed_at). Should the hour turn in between, the new window is complete.
    await timer_function()(TimerRequest())
    second = results(data_dir)
    assert {k: second[k] for k in first} == first
    by_window: dict[str, int] = {}
    for result in second.values():
        by_window[result["window"]["start"]] = by_window.get(result["window"]["start"], 0) + 1
    assert set(by_window.values()) == {len(EXPECTED_STATUSES)}
    assert set(published(data_dir).values()) == {1}


async def test_timer_function_fails_the_invocation_on_invalid_settings(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    await asyncio.to_thread(seed, data_dir, [hour + timedelta(hours=h) for h in range(-3, 2)])
    monkeypatch.setenv(
        "EVALSTREAM_COLDPATH__CATALOGUE", "tests.unit.coldpath.fakes:MISSING_CATALOGUE"
    )
    with pytest.raises(ColdpathError, match="MISSING_CATALOGUE"):
        await timer_function()(TimerRequest())


# --- the orchestration ----------------------------------------------------------------------


class Faults:
    """Unit activities that fail: (app, policy) → how many first attempts raise."""

    def __init__(self, failures: dict[tuple[str, str], int]) -> None:
        self.failures = dict(failures)
        self.real = evaluate_unit

    async def __call__(self, settings: Any, manifest_id: str, unit: Unit) -> UnitReport:
        key = (unit.app_id, unit.policy)
        if self.failures.get(key, 0) > 0:
            self.failures[key] -= 1
            raise ColdpathError(f"store unavailable while evaluating {unit.app_id}/{unit.policy}")
        return await self.real(settings, manifest_id, unit)


async def test_orchestrator_fans_out_retries_and_fans_in(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.to_thread(seed, data_dir, [START - timedelta(hours=1), START])
    # b/speed fails once, then succeeds on its retry; c/health fails all three attempts.
    faults = Faults({("b", "speed"): 1, ("c", "health"): 3})
    monkeypatch.setattr(function_app, "evaluate_unit", faults)
    host = ReplayHost(FUNCTIONS)

    summary = await host.run(function_app.ORCHESTRATOR, started_at=ORCHESTRATION_START)

    # Planned at the orchestration's own clock (context.current_utc_datetime): window 10:00.
    assert summary["at"] == ORCHESTRATION_START.isoformat()
    assert [datetime.fromisoformat(w) for w in summary["windows"]] == [START]
    assert summary["units"] == len(APPS) * len(LIGHT)
    assert summary["evaluated"] == 5 and summary["skipped"] == 0
    assert summary["results"] == 5
    assert summary["breaches"] == 1  # b/speed (c/health's never ran)
    (failure,) = summary["failures"]
    assert failure["app_id"] == "c" and failure["policy"] == "health"
    assert "store unavailable" in failure["error"]
    (heavy,) = summary["heavy_reports"]
    assert heavy["manifest_id"] == summary["heavy_manifests"][0]
    assert heavy["shards"] == 1 and heavy["succeeded"] == [0] and heavy["failed"] == {}
    assert summary["heavy_error"] is None

    # Each call ran as often as the retry policy says: once, twice after one failure, three
    # times (max_number_of_attempts) when it always fails; plan and the heavy hand-off once.
    retry = function_app.RETRY
    runs = {
        (json.loads(payload)["unit"]["app_id"], json.loads(payload)["unit"]["policy"]): n
        for (name, payload), n in host.attempts.items()
        if name == function_app.EVALUATE_UNIT and payload is not None
    }
    assert runs == {
        **{(app, policy): 1 for app in APPS for policy in LIGHT},
        ("b", "speed"): 2,
        ("c", "health"): retry.max_number_of_attempts,
    }
    assert host.attempts[(function_app.SUBMIT_HEAVY, json.dumps(summary["heavy_manifests"]))] == 1
    assert sum(n for (name, _), n in host.attempts.items() if name == function_app.PLAN) == 1
    assert host.timer_delays == [
        timedelta(milliseconds=retry.first_retry_interval_in_milliseconds)
    ] * (1 + retry.max_number_of_attempts)
    # The fan-out was scheduled in one episode: every unit's first call before any completed.
    episode = 0
    first_calls: dict[str, int] = {}
    for event in host.history:
        episode += event["EventType"] == 12
        if event["EventType"] == 4 and event["Name"] == function_app.EVALUATE_UNIT:
            first_calls.setdefault(event["Input"], episode)
    assert len(first_calls) == 6 and len(set(first_calls.values())) == 1

    # What the activities really wrote: every unit but c/health, heavy ones included.
    stored = statuses(results(data_dir))
    assert stored == {k: v for k, v in EXPECTED_STATUSES.items() if k != ("c", "health")}
    breaches = published(data_dir)
    assert len(breaches) == 2 and set(breaches.values()) == {1}  # b/speed, b/deep

    # The next orchestration plans the same manifests and fans out only c/health.
    monkeypatch.setattr(function_app, "evaluate_unit", faults.real)
    again = ReplayHost(FUNCTIONS)
    summary = await again.run(function_app.ORCHESTRATOR, started_at=ORCHESTRATION_START)
    assert summary["units"] == 1 and summary["evaluated"] == 1 and summary["failures"] == []
    assert summary["breaches"] == 1 and summary["heavy_manifests"] == []
    assert statuses(results(data_dir)) == EXPECTED_STATUSES
    assert set(published(data_dir).values()) == {1} and len(published(data_dir)) == 3


async def test_orchestrator_is_deterministic_under_replay(data_dir: Path) -> None:
    """Replaying the finished history again gives the same output without running anything:
    the orchestrator reads no clock and does no I/O of its own."""
    await asyncio.to_thread(seed, data_dir, [START - timedelta(hours=1), START])
    host = ReplayHost(FUNCTIONS)
    summary = await host.run(function_app.ORCHESTRATOR, started_at=ORCHESTRATION_START)
    runs = dict(host.attempts)
    before = results(data_dir)

    state = host.replay(function_app.ORCHESTRATOR, "test-instance")

    assert state["isDone"] is True and state["output"] == summary
    assert host.attempts == runs and results(data_dir) == before
    assert isinstance(function_app.RETRY, df.RetryOptions)
