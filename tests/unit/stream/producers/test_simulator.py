"""The traffic simulator: deterministic, valid where it says so, broken where it says so."""

from __future__ import annotations

import dataclasses
import itertools
import re
import statistics
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas import TelemetryEvent
from stream.producers.simulator import DEFECTS, SCORE_NAMES, Incident, SimulatedEvent, Simulator

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RATE = 200.0
HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
KNOWN_MODELS = {
    "gpt-4o",
    "gpt-4o-mini",
    "phi-3-mini",
    "phi-3-medium",
    "llama-3.1-8b",
    "mistral-large",
}


def simulate(count: int, **kwargs: Any) -> list[SimulatedEvent]:
    kwargs.setdefault("start", START)
    kwargs.setdefault("rate", RATE)
    return list(Simulator(**kwargs).events(count))


def now_after(events: list[SimulatedEvent]) -> datetime:
    return events[-1].event_time + timedelta(seconds=1)


def validation_errors(body: bytes, now: datetime) -> list[dict[str, Any]]:
    try:
        TelemetryEvent.model_validate_json(body, context={"now": now})
    except ValidationError as exc:
        return list(exc.errors(include_url=False, include_input=False))
    return []


@pytest.fixture(scope="module")
def clean() -> list[SimulatedEvent]:
    return simulate(12_000, seed=7)


@pytest.fixture(scope="module")
def clean_docs(clean: list[SimulatedEvent]) -> list[dict[str, Any]]:
    return [orjson.loads(e.body) for e in clean]


# -- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes() -> None:
    incidents = [Incident.parse("latency_regression:app-001@1+5x3")]
    first = simulate(3000, seed=3, incidents=incidents, invalid_fraction=0.1)
    second = simulate(3000, seed=3, incidents=incidents, invalid_fraction=0.1)
    assert [e.body for e in first] == [e.body for e in second]
    assert first == second


def test_different_seed_gives_different_bytes() -> None:
    first = simulate(2000, seed=3)
    second = simulate(2000, seed=4)
    assert all(a.body != b.body for a, b in zip(first, second, strict=True))


def test_ids_depend_on_start_and_nothing_else_does() -> None:
    later = START + timedelta(days=1, microseconds=3)
    first = [orjson.loads(e.body) for e in simulate(2000, seed=3)]
    second = [orjson.loads(e.body) for e in simulate(2000, seed=3, start=later)]
    ids = ("trace_id", "span_id", "event_id", "timestamp")
    for a, b in zip(first, second, strict=True):
        assert a["span_id"] != b["span_id"]
        assert a.get("trace_id", a["metadata"].get("trace_id")) != b.get(
            "trace_id", b["metadata"].get("trace_id")
        )
        a["metadata"].pop("trace_id", None)
        b["metadata"].pop("trace_id", None)
        assert {k: v for k, v in a.items() if k not in ids} == {
            k: v for k, v in b.items() if k not in ids
        }


def test_every_call_restarts_and_shorter_runs_are_prefixes() -> None:
    sim = Simulator(start=START, seed=5)
    long = [e.body for e in sim.events(2500)]
    assert [e.body for e in sim.events(10)] == long[:10]
    assert [e.body for e in sim.events(1500)] == long[:1500]
    assert [e.body for e in itertools.islice(sim.events(), 2500)] == long
    assert list(sim.events(0)) == []
    with pytest.raises(ValueError, match="count"):
        sim.events(-1)


def test_event_time_is_start_plus_index_over_rate(clean: list[SimulatedEvent]) -> None:
    for i, event in enumerate(clean):
        assert event.event_time == START + timedelta(seconds=i / RATE)
    # A different rate spaces the same events differently; odd rates round to the nearest µs.
    fast = simulate(100, seed=7, rate=1000.0)
    assert fast[99].event_time == START + timedelta(seconds=0.099)
    odd = Simulator(start=START, seed=7, rate=3.0)
    for i, event in enumerate(itertools.islice(odd.events(), 0, 3000, 7)):
        exact = Fraction(7 * i * 10**6, 3)
        assert event.event_time == START + timedelta(microseconds=round(exact))


def test_fast_constructed_events_behave_like_dataclass_instances(
    clean: list[SimulatedEvent],
) -> None:
    event = clean[0]
    twin = SimulatedEvent(
        body=event.body,
        app_id=event.app_id,
        event_time=event.event_time,
        valid=event.valid,
        defect=event.defect,
        incident=event.incident,
    )
    assert event == twin
    assert hash(event) == hash(twin)
    assert dataclasses.asdict(event) == dataclasses.asdict(twin)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.body = b"{}"  # type: ignore[misc]


# -- valid events -----------------------------------------------------------------------------


def test_valid_events_validate_as_telemetry(clean: list[SimulatedEvent]) -> None:
    now = now_after(clean)
    for event in clean:
        assert event.valid and event.defect is None and event.incident is None
        parsed = TelemetryEvent.model_validate_json(event.body, context={"now": now})
        assert parsed.app_id == event.app_id
        assert parsed.timestamp == event.event_time
        assert HEX32.match(parsed.trace_id)
        assert parsed.span_id is not None and HEX16.match(parsed.span_id)


def test_traffic_shape(clean: list[SimulatedEvent], clean_docs: list[dict[str, Any]]) -> None:
    sim = Simulator(start=START, seed=7)
    assert sim.app_ids == [f"app-{k:03d}" for k in range(5)]
    counts = [sum(1 for e in clean if e.app_id == app) for app in sim.app_ids]
    # Zipf-like: every app busier than the next, the busiest well above a fair share.
    assert counts == sorted(counts, reverse=True) and len(set(counts)) == 5
    assert counts[0] > 0.35 * len(clean)

    n = len(clean_docs)
    share = {
        "user_id": sum("user_id" in d for d in clean_docs) / n,
        "event_id": sum("event_id" in d for d in clean_docs) / n,
        "metadata_trace": sum("trace_id" not in d for d in clean_docs) / n,
        "error": sum(d["status"] == "error" for d in clean_docs) / n,
    }
    assert 0.04 <= share["user_id"] <= 0.06
    assert 0.28 <= share["event_id"] <= 0.32
    assert 0.085 <= share["metadata_trace"] <= 0.115
    assert 0.002 <= share["error"] <= 0.009
    for doc in clean_docs:
        assert doc["model_id"] in KNOWN_MODELS and doc["model_version"]
        assert {"channel", "locale"} <= doc["metadata"].keys()
        if "trace_id" not in doc:
            assert HEX32.match(doc["metadata"]["trace_id"])


def test_scores_tokens_and_errors_are_plausible(
    clean_docs: list[dict[str, Any]],
) -> None:
    profiles = {p.app_id: p for p in Simulator(start=START, seed=7).profiles}
    app_score_sets = {frozenset(s.name for s in p.scores) for p in profiles.values()}
    assert len(app_score_sets) > 1  # apps differ in which scores they report
    for doc in clean_docs:
        if doc["status"] == "ok":
            names = [s.name for s in profiles[doc["app_id"]].scores]
            assert list(doc["scores"]) == names and "relevance" in names
            assert all(0.0 <= v <= 1.0 for v in doc["scores"].values())
            chars_per_token = len(doc["output_text"]) / doc["tokens"]["output"]
            assert 3.5 <= chars_per_token <= 4.5
            assert doc["tokens"]["input"] > len(doc["input_text"]) / 4
        else:
            assert doc["error_type"] and "output_text" not in doc and "scores" not in doc
            assert doc["tokens"]["output"] == 0


def test_latency_is_lognormal_around_each_models_median(
    clean_docs: list[dict[str, Any]],
) -> None:
    checked = 0
    for profile in Simulator(start=START, seed=7).profiles:
        for model in profile.models:
            assert 300 <= model.median_latency_ms <= 1200
            sample = [
                d["latency_ms"]
                for d in clean_docs
                if d["app_id"] == profile.app_id and d["model_id"] == model.model_id
            ]
            if len(sample) < 500:
                continue
            checked += 1
            median = statistics.median(sample)
            assert abs(median / model.median_latency_ms - 1) < 0.15
            p99 = statistics.quantiles(sample, n=100)[98]
            assert p99 / median > 2.0  # heavy tail
    assert checked >= 3


def test_mean_event_size_is_about_1_2_kb() -> None:
    for seed in (0, 1, 2):
        events = simulate(4000, seed=seed)
        mean = sum(len(e.body) for e in events) / len(events)
        assert 960 <= mean <= 1440, (seed, mean)


# -- broken inputs ----------------------------------------------------------------------------


def _only(loc: tuple[Any, ...], *types: str) -> Any:
    def check(errors: list[dict[str, Any]], body: bytes) -> bool:
        return all(e["loc"] == loc and e["type"] in types for e in errors)

    return check


def _json_invalid(errors: list[dict[str, Any]], body: bytes) -> bool:
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return all(e["type"] == "json_invalid" for e in errors)
    return False


def _wrong_type(errors: list[dict[str, Any]], body: bytes) -> bool:
    allowed = {
        ("latency_ms",): "float_parsing",
        ("tokens", "input"): "int_parsing",
        ("span_id",): "string_type",
    }
    return all(allowed.get(tuple(e["loc"])) == e["type"] for e in errors)


def _invalid_utf8(errors: list[dict[str, Any]], body: bytes) -> bool:
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    return _json_invalid(errors, body)


def _not_an_object(errors: list[dict[str, Any]], body: bytes) -> bool:
    return not isinstance(orjson.loads(body), dict) and _only((), "model_type")(errors, body)


def _nested(errors: list[dict[str, Any]], body: bytes) -> bool:
    return all(tuple(e["loc"][:2]) == ("metadata", "context") for e in errors)


EXPECTED_FAILURE = {
    "malformed_json": _json_invalid,
    "wrong_type": _wrong_type,
    "missing_trace_id": _only(("trace_id",), "missing"),
    "naive_timestamp": _only(("timestamp",), "timezone_aware"),
    # The contract names this error type itself (older revisions raised a plain value_error).
    "future_timestamp": _only(("timestamp",), "timestamp_in_future", "value_error"),
    "oversized_output_text": _only(("output_text",), "string_too_long"),
    "too_many_metadata": _only(("metadata",), "too_long"),
    "invalid_utf8": _invalid_utf8,
    "not_an_object": _not_an_object,
    "deeply_nested_metadata": _nested,
}


def test_expected_failures_cover_every_defect() -> None:
    assert set(EXPECTED_FAILURE) == set(DEFECTS)


def test_invalid_events_fail_with_their_defect(clean: list[SimulatedEvent]) -> None:
    broken = simulate(4000, seed=7, invalid_fraction=0.25)
    now = now_after(broken)
    invalid = [e for e in broken if not e.valid]
    assert 880 <= len(invalid) <= 1120
    assert {e.defect for e in invalid} == set(DEFECTS)
    for i, event in enumerate(broken):
        if event.valid:
            # Defects replace events; they never disturb the others.
            assert event == clean[i]
            continue
        errors = validation_errors(event.body, now)
        assert errors, event.defect
        assert EXPECTED_FAILURE[event.defect](errors, event.body), (event.defect, errors)
        assert event.event_time == clean[i].event_time
        expected_app = None if event.defect == "not_an_object" else clean[i].app_id
        assert event.app_id == expected_app


def test_wrong_types_and_not_an_object_vary() -> None:
    broken = simulate(6000, seed=11, invalid_fraction=1.0)
    wrong = {
        tuple(validation_errors(e.body, now_after(broken))[0]["loc"])
        for e in broken
        if e.defect == "wrong_type"
    }
    assert wrong == {("latency_ms",), ("tokens", "input"), ("span_id",)}
    scalars = {e.body for e in broken if e.defect == "not_an_object"}
    assert scalars == {b"42", b'"hello"', b"null", b"true", b"3.5"}


# -- incidents --------------------------------------------------------------------------------


def _in_span(event: SimulatedEvent, app_id: str, start_s: float, end_s: float) -> bool:
    offset = (event.event_time - START).total_seconds()
    return event.app_id == app_id and start_s <= offset < end_s


def test_latency_regression_multiplies_latency_in_its_span_only(
    clean: list[SimulatedEvent],
) -> None:
    incident = Incident.parse("latency_regression:app-001@20+20x3")
    slow = simulate(len(clean), seed=7, incidents=[incident])
    touched = 0
    for before, after in zip(clean, slow, strict=True):
        if not _in_span(before, "app-001", 20, 40):
            assert after == before
            continue
        touched += 1
        assert after.incident == "latency_regression"
        old, new = orjson.loads(before.body), orjson.loads(after.body)
        # Both values are rounded to 0.1 ms; the factor is otherwise exact.
        assert abs(new.pop("latency_ms") - 3 * old.pop("latency_ms")) <= 0.2
        assert new == old
    assert touched > 500


def test_score_drift_shifts_one_score_by_sigmas_in_its_span_only(
    clean: list[SimulatedEvent],
) -> None:
    incident = Incident.parse("score_drift:app-000@10+20x-2")
    sim = Simulator(start=START, rate=RATE, seed=7, incidents=[incident])
    profile = sim.profiles[0]
    score = sim.drift_score(incident)
    assert score == profile.scores[0].name
    sigma = next(s.sigma for s in profile.scores if s.name == score)
    drifted = list(sim.events(len(clean)))
    exact = 0
    shifts = []
    for before, after in zip(clean, drifted, strict=True):
        if not _in_span(before, "app-000", 10, 30):
            assert after == before
            continue
        assert after.incident == "score_drift"
        old, new = orjson.loads(before.body), orjson.loads(after.body)
        if old["status"] == "error":
            assert new == old
            continue
        old_value, new_value = old["scores"].pop(score), new["scores"].pop(score)
        assert new == old  # every other field and score is untouched
        shifts.append(new_value - old_value)
        if new_value > 0 and old_value < 1:  # not clipped at the bounds
            exact += 1
            assert abs(new_value - old_value + 2 * sigma) <= 0.0011
    assert exact > 500
    assert statistics.mean(shifts) < -1.5 * sigma


def test_error_burst_sets_the_error_rate_in_its_span_only(
    clean: list[SimulatedEvent],
) -> None:
    incident = Incident.parse("error_burst:app-002@5+30x0.5")
    bursty = simulate(len(clean), seed=7, incidents=[incident])
    statuses = []
    for before, after in zip(clean, bursty, strict=True):
        if not _in_span(before, "app-002", 5, 35):
            assert after == before
            continue
        assert after.incident == "error_burst"
        new = orjson.loads(after.body)
        statuses.append(new["status"])
        if new["status"] == "ok":
            assert after.body == before.body
        else:
            old = orjson.loads(before.body)
            assert (new["span_id"], new["input_text"]) == (old["span_id"], old["input_text"])
            assert new["error_type"] and "output_text" not in new
    assert len(statuses) > 500
    assert 0.42 <= statuses.count("error") / len(statuses) <= 0.58


def test_overlapping_incidents_name_the_first_listed() -> None:
    incidents = [
        Incident.parse("error_burst:app-000@0+10x0.2"),
        Incident.parse("latency_regression:app-000@5+10x2"),
    ]
    events = simulate(4000, seed=1, incidents=incidents)
    kinds = {
        (e.incident, _in_span(e, "app-000", 5, 10)) for e in events if _in_span(e, "app-000", 0, 15)
    }
    assert kinds == {("error_burst", False), ("error_burst", True), ("latency_regression", False)}


# -- Incident.parse and constructor checks -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "latency_regression:app-002@120+300x3",
            Incident("latency_regression", "app-002", 120.0, 300.0, 3.0),
        ),
        (
            "score_drift:app-001@60.5+120x-2",
            Incident("score_drift", "app-001", 60.5, 120.0, -2.0),
        ),
        (
            "score_drift:app-001/toxicity@0+1e3x1.5",
            Incident("score_drift", "app-001", 0.0, 1000.0, 1.5, score="toxicity"),
        ),
        ("error_burst:app-000@0+30x0.2", Incident("error_burst", "app-000", 0.0, 30.0, 0.2)),
        (" error_burst:ns:app.x@1+2x1 ", Incident("error_burst", "ns:app.x", 1.0, 2.0, 1.0)),
    ],
)
def test_parse_accepts(text: str, expected: Incident) -> None:
    parsed = Incident.parse(text)
    assert parsed == expected
    assert Incident.parse(str(parsed)) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "latency_regression",
        "latency_regression:app-002",
        "latency_regression:app-002@120+300",
        "latency_regression:app-002@120x3",
        "latency_regression:@120+300x3",
        "cpu_spike:app-002@120+300x3",
        "latency_regression:app-002@-5+300x3",
        "latency_regression:app-002@120+0x3",
        "latency_regression:app-002@120+300x0",
        "latency_regression:app-002@120+300x-3",
        "latency_regression:app-002@12 0+300x3",
        "latency_regression:app 002@120+300x3",
        "error_burst:app-000@0+30x1.5",
        "latency_regression:app-002/relevance@120+300x3",
        "score_drift:app-001@nan+1x1",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(text.strip()) if text else "cannot parse"):
        Incident.parse(text)


def test_incident_checks_its_values_when_built_directly() -> None:
    with pytest.raises(ValueError, match="finite"):
        Incident("latency_regression", "app-000", 0.0, float("inf"), 2.0)
    with pytest.raises(ValueError, match="unknown incident kind"):
        Incident("cpu_spike", "app-000", 0.0, 1.0, 2.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"apps": 0}, "apps"),
        ({"rate": 0.0}, "rate"),
        ({"rate": float("nan")}, "rate"),
        ({"start": datetime(2026, 3, 1)}, "timezone-aware"),
        ({"invalid_fraction": 1.5}, "invalid_fraction"),
        ({"incidents": [Incident.parse("error_burst:app-009@0+1x0.5")]}, "unknown app"),
        (
            {"incidents": [Incident.parse("score_drift:app-000/sarcasm@0+1x1")]},
            "no score 'sarcasm'",
        ),
    ],
)
def test_simulator_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    kwargs.setdefault("start", START)
    with pytest.raises(ValueError, match=message):
        Simulator(**kwargs)


def test_many_apps_get_wider_names_and_known_scores() -> None:
    sim = Simulator(apps=1200, start=START)
    assert sim.app_ids[0] == "app-0000" and sim.app_ids[-1] == "app-1199"
    assert all(s.name in SCORE_NAMES for p in sim.profiles for s in p.scores)
    shares = [p.share for p in sim.profiles]
    assert abs(sum(shares) - 1) < 1e-9 and shares == sorted(shares, reverse=True)
