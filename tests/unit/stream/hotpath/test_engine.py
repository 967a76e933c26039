"""HotPath: signals, breach lifecycle, per-app configuration, exact snapshots."""

from __future__ import annotations

import logging
import math
import random
from functools import cache

import orjson
import pytest

from schemas.appconfig import AppDirectory
from schemas.breach import (
    MAX_SAMPLE_TRACE_IDS,
    Breach,
    BreachKind,
    BreachSource,
    BreachState,
    Severity,
    breach_id_for,
)
from schemas.document import TelemetryDocument
from stream.hotpath import HotPath, SnapshotError
from stream.hotpath.incident import Incident
from stream.hotpath.lifecycle import BreachTracker
from stream.hotpath.packing import unpack_ids

from .streams import document, trace_id

LENGTH = 9000
LATENCY_INCIDENT = range(3000, 4500)  # app-a: latency ×10 (SLO: 2000 ms, 5 % budget)
SCORE_SHIFT = 6000  # app-a: relevance +0.15 (3σ) from here on
ERROR_INCIDENT = range(5000, 6000)  # app-b: every request fails


@cache
def incident_stream() -> tuple[TelemetryDocument, ...]:
    """Two apps of one partition, one request per second each, interleaved."""
    rng = random.Random(42)
    docs = []
    for i in range(LENGTH):
        latency = 300.0 * math.exp(0.3 * rng.gauss(0, 1))
        if i in LATENCY_INCIDENT:
            latency *= 10
        relevance = 0.8 + 0.05 * rng.gauss(0, 1) + (0.15 if i >= SCORE_SHIFT else 0.0)
        docs.append(
            document(
                i,
                app_id="app-a",
                latency_ms=latency,
                output_chars=int(rng.gauss(800, 100)),
                scores={"relevance": relevance},
            )
        )
        docs.append(
            document(
                i,
                app_id="app-b",
                seconds=i + 0.5,
                latency_ms=300.0 * math.exp(0.3 * rng.gauss(0, 1)),
                error=i in ERROR_INCIDENT,
                output_chars=int(rng.gauss(500, 50)),
            )
        )
    return tuple(docs)


def run(engine: HotPath, docs: tuple[TelemetryDocument, ...]) -> list[tuple[int, Breach]]:
    return [(n, b) for n, doc in enumerate(docs) for b in engine.observe(doc)]


@cache
def uninterrupted() -> tuple[tuple[tuple[int, Breach], ...], bytes]:
    engine = HotPath(AppDirectory())
    breaches = run(engine, incident_stream())
    return tuple(breaches), engine.snapshot()


def of(signal: str, detector: str, app_id: str) -> list[tuple[int, Breach]]:
    return [
        (n, b)
        for n, b in uninterrupted()[0]
        if b.signal == signal and b.detector == detector and b.app_id == app_id
    ]


def test_error_outage_opens_once_and_resolves_once() -> None:
    docs = incident_stream()
    critical = of("error", "burn_critical", "app-b")
    assert [b.state for _, b in critical] == [BreachState.OPENED, BreachState.RESOLVED]
    (opened_at, opened), (resolved_at, resolved) = critical
    # Worked by hand (see test_burn_rate): with 5000 s of history the 6 h / 30 m rule sees
    # 6 % failures at the 320th failing request.
    opening = docs[opened_at]
    assert opening.trace_id == "app-b-trace-5319"
    assert opened.kind is BreachKind.ERROR_RATE
    assert opened.source is BreachSource.HOT
    assert opened.severity is Severity.CRITICAL
    assert opened.threshold == 6.0
    assert opened.baseline == 0.01
    assert opened.observed >= 6.0
    assert opened.opened_at == opening.timestamp
    window = f"21600s/1800s@{opened.window_start.isoformat()}"
    assert opened.breach_id == breach_id_for("app-b", "error", "burn_critical", window)
    # Samples: the latest failing requests, the opening one last.
    assert len(opened.sample_trace_ids) == MAX_SAMPLE_TRACE_IDS
    assert opened.sample_trace_ids[-1] == "app-b-trace-5319"
    assert all(5310 <= int(t.rsplit("-", 1)[1]) <= 5319 for t in opened.sample_trace_ids)
    # Resolution: same id, after the failures ended and the rule stayed quiet for 600 s.
    assert resolved.breach_id == opened.breach_id
    assert resolved.resolved_at is not None
    quiet_for = (resolved.resolved_at - docs[2 * ERROR_INCIDENT.stop + 1].timestamp).total_seconds()
    assert 600 <= quiet_for <= 600 + 30 * 60 + 300
    assert resolved_at > opened_at


def test_ticket_rule_waits_for_six_hours_of_history() -> None:
    # The outage burns 1× the budget within a minute, but the apps have less than the warning
    # rule's 6 h short window of history: no ticket, only the page.
    assert of("error", "burn_warning", "app-b") == []
    assert of("latency_ms", "burn_warning", "app-a") == []


def test_warning_ticket_on_a_long_history() -> None:
    apps = AppDirectory(defaults={"slo": {"require_full_windows": False}})
    engine = HotPath(apps)
    docs = incident_stream()
    warning = [
        (n, b)
        for n, b in run(engine, docs)
        if (b.app_id, b.signal, b.detector) == ("app-b", "error", "burn_warning")
    ]
    assert [b.state for _, b in warning][:1] == [BreachState.OPENED]
    assert warning[0][1].severity is Severity.WARNING
    # 1 % of 5001 + k requests fail first at k = 50.
    assert docs[warning[0][0]].trace_id == "app-b-trace-5050"
    assert len([b for _, b in warning if b.state is BreachState.OPENED]) == 1


def test_a_long_latency_regression_is_one_incident_until_it_is_over() -> None:
    # Latency ×10 for 1500 s with the default 5 % budget: the spread detector (the size of
    # the deviations jumps) opens an incident at the jump, ADWIN, the KS test and the tail
    # detector join it; the SLO, burning 6× over 6 h near the end of the regression,
    # escalates it; it resolves after latency came back and the SLO stopped burning. The
    # drift detectors learn the regressed latency as their new baseline and go quiet long
    # before the regression ends: their breaches stay open while that baseline is away from
    # the one they fired against (before, the incident resolved at 2,400 of 3,000 documents
    # into the regression and the SLO opened a second one).
    docs = incident_stream()
    latency = [
        (n, b) for n, b in uninterrupted()[0] if (b.app_id, b.signal) == ("app-a", "latency_ms")
    ]
    assert [(b.state, b.detector) for _, b in latency] == [
        (BreachState.OPENED, "scale"),
        (BreachState.ESCALATED, "scale"),
        (BreachState.RESOLVED, "scale"),
    ]
    (n, breach), (escalated_n, escalated), (resolved_n, resolved) = latency
    index = int(docs[n].id.rsplit("-", 1)[1])
    assert LATENCY_INCIDENT.start <= index < LATENCY_INCIDENT.start + 100
    assert breach.kind is BreachKind.DRIFT
    assert breach.breach_id == breach_id_for("app-a", "latency_ms", "scale", docs[n].id)
    assert {b.breach_id for _, b in latency} == {breach.breach_id}
    assert breach.observed > 5 * breach.baseline  # type: ignore[operator]
    assert breach.detectors == ["scale"]
    # Drift samples are the app's latest requests, the detecting one last.
    app_docs = [d for d in docs[: n + 1] if d.app_id == "app-a"]
    assert breach.sample_trace_ids == [d.trace_id for d in app_docs[-MAX_SAMPLE_TRACE_IDS:]]
    # Escalated by the SLO inside the regression, resolved after it.
    assert LATENCY_INCIDENT.start < int(docs[escalated_n].id.rsplit("-", 1)[1])
    assert int(docs[escalated_n].id.rsplit("-", 1)[1]) < LATENCY_INCIDENT.stop
    assert escalated.kind is BreachKind.LATENCY and escalated.severity is Severity.CRITICAL
    assert escalated.detectors == ["scale", "adwin", "ks", "tail", "burn_critical"]
    assert int(docs[resolved_n].id.rsplit("-", 1)[1]) > LATENCY_INCIDENT.stop
    assert resolved.detectors == escalated.detectors
    assert resolved.message.endswith("; resolved: scale, adwin, ks, tail, burn_critical quiet")
    # Evidence times are event times, in the order the detectors fired.
    times = [e.at for e in resolved.evidence]
    assert times == sorted(times) and times[0] == breach.opened_at


def test_score_shift_is_found_on_its_own_signal() -> None:
    found = [b for _, b in of("score:relevance", "adwin", "app-a")]
    # The shift lasts to the end of the stream: the incident stays open (the detectors'
    # new baseline is away from the one they fired against).
    assert [b.state for b in found] == [BreachState.OPENED]
    assert found[0].observed == pytest.approx(0.95, abs=0.03)
    assert found[0].baseline == pytest.approx(0.80, abs=0.01)
    # The KS test saw the 3σ shift too: one incident, its evidence in it (the spread
    # detector watches latency only by default).
    saved = orjson.loads(uninterrupted()[1])["apps"]["app-a"]["signals"]["score:relevance"]
    incident = Incident([BreachTracker("app-a", "score:relevance", 1000, 0.0)])
    incident.load_state(saved["incident"])
    assert incident.open is not None and incident.open.breach_id == found[0].breach_id
    assert incident.open.detectors == ["adwin", "ks"]
    ks = next(e for e in incident.open.evidence if e.detector == "ks")
    # The KS level is the mean of the window that differed (partly before the shift).
    assert 0.83 < ks.observed < 0.97
    assert ks.at > found[0].opened_at


LARGEST = 1.7976931348623157e308


@pytest.mark.parametrize(
    "extremes",
    [
        [0.0, LARGEST, 5e-324, 100.0],  # latency and a score jumping to the largest double
        [LARGEST, -LARGEST, 0.5],  # a score at both ends
        [1e200, 1e300, 1.0],
    ],
)
def test_values_at_the_ends_of_a_double_give_breaches_that_read_back(extremes: list[float]) -> None:
    # Alternating quiet and extreme stretches, so that detectors fire on the extremes and
    # resolve after them: every figure of every breach (and its evidence) is a finite double,
    # and the breach's JSON reads back as the same breach.
    rnd = random.Random(3)
    engine = HotPath(AppDirectory())
    breaches: list[Breach] = []
    for i in range(9000):
        extreme = (i // 1500) % 2 == 1
        value = rnd.choice(extremes) if extreme else rnd.random()
        doc = document(i, latency_ms=abs(value) if extreme else 300 + value, scores={"s": value})
        breaches += engine.observe(doc)
    assert len({b.signal for b in breaches}) >= 2, breaches
    for breach in breaches:
        for found in (breach, *breach.evidence):
            figures = (found.observed, found.baseline, found.threshold)
            assert all(v is None or math.isfinite(v) for v in figures), found
        assert Breach.model_validate_json(breach.model_dump_json()) == breach


def test_stable_signals_stay_quiet() -> None:
    noisy = {
        (b.app_id, b.signal)
        for _, b in uninterrupted()[0]
        if (b.app_id, b.signal) not in {("app-a", "latency_ms"), ("app-a", "score:relevance")}
        and (b.app_id, b.signal) != ("app-b", "error")
    }
    assert noisy == set()


def test_snapshot_and_restore_at_random_boundaries_is_exact() -> None:
    docs = incident_stream()
    expected, final = uninterrupted()
    cuts = sorted(random.Random(7).sample(range(1, len(docs)), 40))
    apps = AppDirectory()
    engine = HotPath(apps)
    found: list[tuple[int, Breach]] = []
    previous = 0
    for cut in [*cuts, len(docs)]:
        found += [(previous + n, b) for n, b in run(engine, docs[previous:cut])]
        engine = HotPath.restore(apps, engine.snapshot())
        previous = cut
    assert [(n, b.model_dump()) for n, b in found] == [(n, b.model_dump()) for n, b in expected]
    assert engine.snapshot() == final


def test_snapshot_is_versioned_json() -> None:
    document = orjson.loads(uninterrupted()[1])
    assert document["format"] == "evalstream.hotpath"
    assert document["version"] == 4
    assert set(document["apps"]) == {"app-a", "app-b"}


@pytest.mark.parametrize(
    "blob",
    [
        b"not json",
        b"[]",
        b'{"format": "evalstream.hotpath", "version": 99, "apps": {}}',
        b'{"format": "evalstream.hotpath", "version": 1, "apps": {}}',
        b'{"format": "evalstream.hotpath", "version": 2, "river": "0.1", "apps": {}}',
        # Before incidents (one breach per detector): starts afresh rather than half-merged.
        b'{"format": "evalstream.hotpath", "version": 3, "river": "0.1", "apps": {}}',
    ],
)
def test_restore_rejects_what_it_cannot_continue_from(blob: bytes) -> None:
    with pytest.raises(SnapshotError):
        HotPath.restore(AppDirectory(), blob)


def test_a_detector_whose_configuration_changed_starts_fresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    docs = incident_stream()
    engine = HotPath(AppDirectory())
    run(engine, docs[:2000])
    # Four buckets per window instead of twelve: the burn-rate state no longer fits.
    changed = AppDirectory(defaults={"slo": {"buckets_per_window": 4}})
    with caplog.at_level(logging.WARNING, logger="stream.hotpath.engine"):
        restored = HotPath.restore(changed, engine.snapshot())
    assert len([r for r in caplog.records if "starting fresh" in r.getMessage()]) == 8
    state = orjson.loads(restored.snapshot())["apps"]["app-a"]["signals"]
    assert state["error"]["burn_critical"][0][2][0] == 0  # seen nothing yet
    assert (
        state["latency_ms"]["adwin"]
        == orjson.loads(engine.snapshot())["apps"]["app-a"]["signals"]["latency_ms"]["adwin"]
    )
    # It keeps working.
    run(restored, docs[2000:2100])


def test_restore_rejects_a_malformed_snapshot() -> None:
    engine = HotPath(AppDirectory())
    engine.observe(document(0))
    document_ = orjson.loads(engine.snapshot())
    del document_["apps"]["app-a"]["watermark"]
    with pytest.raises(SnapshotError):
        HotPath.restore(AppDirectory(), orjson.dumps(document_))


def test_per_app_overrides() -> None:
    # app-b's budget is generous enough that the outage burns it slower than any rule.
    apps = AppDirectory(overrides={"app-b": {"slo": {"error_budget": 0.9}}})
    engine = HotPath(apps)
    breaches = [b for _, b in run(engine, incident_stream())]
    assert not [b for b in breaches if b.app_id == "app-b" and b.signal == "error"]
    assert [b for b in breaches if b.app_id == "app-a" and b.signal == "latency_ms"]


def test_signals_of_an_event() -> None:
    engine = HotPath(AppDirectory())
    engine.observe(document(0, scores={"relevance": 0.9, "safety": 1.0}))
    engine.observe(document(1, app_id="app-c", error=True, latency_ms=None, tokens=False))
    assert set(engine.state_sizes) == {
        ("app-a", "*"),
        ("app-a", "latency_ms"),
        ("app-a", "error"),
        ("app-a", "output_chars"),
        ("app-a", "tokens_total"),
        ("app-a", "score:relevance"),
        ("app-a", "score:safety"),
        # A failed request says nothing about output, tokens or scores.
        ("app-c", "*"),
        ("app-c", "error"),
    }


def test_score_names_are_bounded_per_app(caplog: pytest.LogCaptureFixture) -> None:
    apps = AppDirectory(overrides={"app-a": {"detectors": {"max_score_signals": 3}}})
    engine = HotPath(apps)
    with caplog.at_level(logging.WARNING, logger="stream.hotpath.engine"):
        for i in range(3):
            engine.observe(document(i, scores={f"s{k}": 0.5 for k in range(5)}))
        # Names that never repeat (a request id as a score name): nothing grows with them.
        for i in range(3, 500):
            engine.observe(document(i, scores={f"s{k}": 0.5 for k in range(3)} | {f"r{i}": 1.0}))
    scores = sorted(s for (_, s) in engine.state_sizes if s.startswith("score:"))
    assert scores == ["score:s0", "score:s1", "score:s2"]
    assert len(engine._apps["app-a"].by_score) == 3
    # Logged once for the app, not once per refused name or event.
    assert len([r for r in caplog.records if "too many score names" in r.getMessage()]) == 1


def test_apps_beyond_the_limit_are_stored_not_detected(caplog: pytest.LogCaptureFixture) -> None:
    apps = AppDirectory(max_detected_apps=3, overrides={"configured": {}})
    engine = HotPath(apps)
    with caplog.at_level(logging.WARNING, logger="stream.hotpath.engine"):
        for i in range(200):
            # A new app id per event, as a producer that put a request id there would send.
            assert engine.observe(document(i, app_id=f"request-{i}")) == []
        engine.observe(document(0, app_id="configured"))
        engine.observe(document(1, app_id="request-0"))
    followed = sorted({app_id for app_id, _ in engine.state_sizes})
    assert followed == ["configured", "request-0", "request-1", "request-2"]
    assert engine.undetected_events == 197
    assert len([r for r in caplog.records if "app not detected" in r.getMessage()]) == 1
    restored = HotPath.restore(apps, engine.snapshot())
    restored.observe(document(300, app_id="request-300"))
    assert sorted({app_id for app_id, _ in restored.state_sizes}) == followed


def test_drift_detectors_follow_the_configuration() -> None:
    apps = AppDirectory(
        defaults={"detectors": {"detectors": ["page_hinkley"]}},
        overrides={"app-b": {"detectors": {"enabled": False}}},
    )
    engine = HotPath(apps)
    engine.observe(document(0))
    engine.observe(document(0, app_id="app-b"))
    state = orjson.loads(engine.snapshot())["apps"]
    assert set(state["app-a"]["signals"]["latency_ms"]) == {
        "page_hinkley",
        "burn_critical",
        "burn_warning",
        "samples",
    }
    assert set(state["app-a"]["signals"]["output_chars"]) == {"page_hinkley"}
    assert set(state["app-b"]["signals"]["latency_ms"]) == {
        "burn_critical",
        "burn_warning",
        "samples",
    }
    assert state["app-b"]["signals"]["output_chars"] == {}


def test_state_per_signal_stays_small() -> None:
    # Target: 2 KB per (app, signal) while no breach is open (an open breach adds its JSON
    # until it resolves). Measured as bench/detectors.py does, at its hardest: W3C trace ids
    # (32 hex digits), latency at its SLO so that the samples of offending requests fill up,
    # every signal, read every 250 events (ADWIN's state grows and shrinks with its window).
    rng = random.Random(17)
    engine = HotPath(AppDirectory())
    largest: dict[str, int] = {}
    full = set()
    for i in range(6000):
        failed = rng.random() < 0.02
        doc = document(
            i,
            latency_ms=1200.0 * math.exp(0.5 * rng.gauss(0, 1)),  # ~15 % over 2000 ms
            error=failed,
            output_chars=int(rng.gauss(800, 100)),
            scores={"relevance": rng.betavariate(8, 2), "safety": rng.betavariate(20, 1)},
        ).model_copy(update={"trace_id": trace_id(i)})
        assert engine.observe(doc) == []
        if i % 250 == 249:
            state = orjson.loads(engine.snapshot())["apps"]["app-a"]["signals"]
            for (_, signal), size in engine.state_sizes.items():
                largest[signal] = max(largest.get(signal, 0), size)
                if (
                    len(unpack_ids(state.get(signal, {}).get("samples", [])))
                    == MAX_SAMPLE_TRACE_IDS
                ):
                    full.add(signal)
    assert full == {"latency_ms", "error"}
    assert set(largest) == {
        "*",
        "latency_ms",
        "error",
        "output_chars",
        "tokens_total",
        "score:relevance",
        "score:safety",
    }
    assert all(size <= 2048 for size in largest.values()), largest
    # Latency carries the most: ADWIN, KS, two burn-rate detectors and ten trace ids.
    assert max(largest, key=lambda s: largest[s]) == "latency_ms"


def test_snapshots_along_the_way_see_every_event() -> None:
    # Each app's JSON is cached until its next event: taking snapshots in between must not
    # leave a stale app behind.
    docs = incident_stream()
    engine = HotPath(AppDirectory())
    previous = 0
    for cut in [*sorted(random.Random(8).sample(range(1, len(docs)), 20)), len(docs)]:
        run(engine, docs[previous:cut])
        blob = engine.snapshot()
        assert HotPath.restore(AppDirectory(), blob).snapshot() == blob
        previous = cut
    assert engine.snapshot() == uninterrupted()[1]


def test_a_low_rate_app_pages_a_full_outage_within_10_minutes() -> None:
    # One request a minute: five healthy hours, then every request fails. The processor's
    # hot path (default configuration) publishes a critical error-rate incident 8 minutes
    # into the outage (the 1 h window at 14.4× the budget, its 5 min window holding 5).
    engine = HotPath(AppDirectory())
    healthy, outage = 300, 60
    docs = [document(i, seconds=60.0 * i, error=i >= healthy) for i in range(healthy + outage)]
    pages = [
        (n, b)
        for n, b in run(engine, tuple(docs))
        if b.signal == "error" and b.state is BreachState.OPENED
    ]
    assert pages, "no page"
    _, page = pages[0]
    assert page.severity is Severity.CRITICAL and page.kind is BreachKind.ERROR_RATE
    minutes = (page.opened_at - docs[healthy].timestamp).total_seconds() / 60
    assert minutes == 8.0
    assert page.threshold == 14.4
