"""Incidents: one regression is one incident with every detector's evidence, across restarts."""

from __future__ import annotations

import math
import random
from datetime import timedelta, timezone
from functools import cache

import orjson

from schemas.appconfig import AppDirectory
from schemas.breach import Breach, BreachKind, BreachState, Severity, breach_id_for
from schemas.document import TelemetryDocument
from stream.hotpath import HotPath
from stream.hotpath.incident import Incident
from stream.hotpath.lifecycle import BreachTracker

from .streams import document

# The defaults: a 5 % latency budget, so the SLO burns 6× over 6 h only near the end of the
# regression, long after the drift detectors learnt the regressed latency as their baseline.
APPS = AppDirectory()
REGRESSION = range(3000, 4500)  # latency ×10


@cache
def regression() -> tuple[TelemetryDocument, ...]:
    """One app, one request per second: 3000 s normal, 1500 s at ten times the latency,
    then normal again."""
    rng = random.Random(5)
    docs = []
    for i in range(9000):
        latency = 300.0 * math.exp(0.3 * rng.gauss(0, 1))
        if i in REGRESSION:
            latency *= 10
        docs.append(document(i, latency_ms=latency, output_chars=int(rng.gauss(800, 100))))
    return tuple(docs)


def run(
    engine: HotPath, docs: tuple[TelemetryDocument, ...], start: int = 0
) -> list[tuple[int, Breach]]:
    return [(start + n, b) for n, doc in enumerate(docs) for b in engine.observe(doc)]


@cache
def uninterrupted() -> tuple[tuple[int, Breach], ...]:
    return tuple(run(HotPath(APPS), regression()))


def test_one_regression_is_one_incident_with_several_detectors_evidence() -> None:
    docs = regression()
    messages = uninterrupted()
    # Nothing else in the stream: three messages of one incident, in order.
    assert [b.state for _, b in messages] == [
        BreachState.OPENED,
        BreachState.ESCALATED,
        BreachState.RESOLVED,
    ]
    (opened_n, opened), (escalated_n, escalated), (resolved_n, resolved) = messages
    assert {(b.app_id, b.signal) for _, b in messages} == {("app-a", "latency_ms")}
    assert opened_n < escalated_n < resolved_n
    # Opened at the jump by the spread detector (the deviations' size jumps first), with
    # the id a lone breach of that detector would have.
    assert REGRESSION.start <= opened_n < REGRESSION.start + 50
    assert (opened.detector, opened.kind, opened.severity) == (
        "scale",
        BreachKind.DRIFT,
        Severity.WARNING,
    )
    incident_id = breach_id_for("app-a", "latency_ms", "scale", docs[opened_n].id)
    assert {b.breach_id for _, b in messages} == {incident_id}
    assert opened.detectors == ["scale"]
    # ADWIN and the KS test agree (silently: same severity), then the SLO escalates it.
    assert REGRESSION.start < escalated_n < REGRESSION.stop
    assert escalated.severity is Severity.CRITICAL and escalated.kind is BreachKind.LATENCY
    assert escalated.detectors == ["scale", "adwin", "ks", "tail", "burn_critical"]
    assert escalated.detector == "scale" and escalated.opened_at == opened.opened_at
    assert escalated.threshold == 6.0
    assert escalated.window_end == docs[escalated_n].timestamp
    # Samples of an SLO escalation are requests over the SLO, the escalating one last.
    assert escalated.sample_trace_ids[-1] == docs[escalated_n].trace_id
    evidence = {e.detector: e for e in escalated.evidence}
    assert evidence["ks"].kind is BreachKind.DRIFT
    assert opened.opened_at < evidence["adwin"].at < evidence["ks"].at
    assert evidence["ks"].at < evidence["burn_critical"].at
    # Resolved once every detector is quiet and back: the drift detectors went quiet a
    # thousand values into the regression, but their breaches held while the baseline they
    # relearnt was the regressed one; after latency recovered they relearnt the old one and
    # the SLO stopped burning (its 600 s of hysteresis).
    assert resolved_n > REGRESSION.stop + 600
    assert resolved.severity is Severity.CRITICAL
    assert resolved.detectors == ["scale", "adwin", "ks", "tail", "burn_critical"]
    assert resolved.resolved_at == docs[resolved_n].timestamp
    assert resolved.message.endswith("; resolved: scale, adwin, ks, tail, burn_critical quiet")
    # One message per state: the bus's duplicate detection keeps them all.
    assert [b.message_id for _, b in messages] == [
        f"{incident_id}:opened",
        f"{incident_id}:escalated",
        f"{incident_id}:resolved",
    ]


def test_the_incident_survives_restarts_exactly() -> None:
    # Snapshot and restore at random boundaries, and at the boundaries around each message:
    # the same messages with the same content, and the same final state.
    docs = regression()
    expected = uninterrupted()
    around = [n + d for n, _ in expected for d in (0, 1)]
    cuts = sorted({*random.Random(11).sample(range(1, len(docs)), 30), *around})
    engine, found, previous = HotPath(APPS), [], 0
    for cut in [*cuts, len(docs)]:
        found += run(engine, docs[previous:cut], previous)
        snapshot = engine.snapshot()
        engine = HotPath.restore(APPS, snapshot)
        assert engine.snapshot() == snapshot
        previous = cut
    assert [(n, b.model_dump()) for n, b in found] == [(n, b.model_dump()) for n, b in expected]
    reference = HotPath(APPS)
    run(reference, docs)
    assert engine.snapshot() == reference.snapshot()


def test_an_open_incident_is_in_the_snapshot_compact_and_exact() -> None:
    docs = regression()
    _, (escalated_n, escalated), _ = uninterrupted()
    engine = HotPath(APPS)
    run(engine, docs[: escalated_n + 1])
    signal = orjson.loads(engine.snapshot())["apps"]["app-a"]["signals"]["latency_ms"]
    saved = signal["incident"]
    # Compact (a list, not the breach's JSON object), and it decodes to the open incident:
    # right after the escalation, the escalated message.
    assert isinstance(saved, list)
    assert len(orjson.dumps(saved)) < 0.7 * len(escalated.model_dump_json())
    # Messages as what they are made of: each evidence row's as its detector's message
    # arguments, the incident's as "row 4's escalating the opener's" (the SLO's is row 4).
    assert saved[3] == [4]
    assert all(isinstance(row[4], list) for row in saved[4])
    assert len(orjson.dumps(saved)) < 0.4 * len(escalated.model_dump_json())
    incident = Incident([BreachTracker("app-a", "latency_ms", 1000, 0.0)])
    incident.load_state(saved)
    assert incident.open == escalated
    run(engine, docs[escalated_n + 1 :])
    signal = orjson.loads(engine.snapshot())["apps"]["app-a"]["signals"]["latency_ms"]
    assert "incident" not in signal


def test_an_incident_the_compact_form_cannot_hold_is_kept_whole() -> None:
    # A time in another zone does not survive µs since the epoch as the same JSON: the full
    # JSON is kept instead, and loads back equal.
    _, (_, escalated), _ = uninterrupted()
    elsewhere = escalated.model_copy(
        update={"opened_at": escalated.opened_at.astimezone(timezone(timedelta(hours=2)))}
    )
    incident = Incident([BreachTracker("app-a", "latency_ms", 1000, 0.0)])
    incident.open = elsewhere
    saved = orjson.loads(orjson.dumps(incident.state()))
    assert isinstance(saved, dict)
    restored = Incident([BreachTracker("app-a", "latency_ms", 1000, 0.0)])
    restored.load_state(saved)
    assert restored.open == elsewhere
