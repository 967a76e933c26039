"""AI-assisted text metrics through the real azure-ai-evaluation call path (prompty, openai's
AsyncAzureOpenAI, HTTP) against the local scripted judge (tests/emulators/openai)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from pydantic import SecretStr

from coldpath.policies.base import MetricOutcome
from coldpath.policies.text import JudgeModelConfig, text_metrics
from schemas import AppConfig, TelemetryDocument
from tests.emulators.openai import DEFAULT_SCORE, JudgeServer
from tests.unit.coldpath.text_docs import text_doc

pytestmark = pytest.mark.integration

AI_METRICS = ("text.groundedness", "text.relevance", "text.coherence", "text.fluency")
TRAIT = {name: name.removeprefix("text.") for name in AI_METRICS}


@pytest.fixture(scope="module")
def server() -> Iterator[JudgeServer]:
    with JudgeServer() as running:
        yield running


@pytest.fixture
def judge(server: JudgeServer) -> JudgeModelConfig:
    server.reset()
    return JudgeModelConfig(
        endpoint=server.endpoint,
        deployment="judge-4o",
        api_version="2024-10-21",
        api_key=SecretStr(server.key),
    )


def doc(number: int, marker: str = "", **kwargs: Any) -> TelemetryDocument:
    metadata = {"context": "The service stores telemetry and evaluates it hourly."}
    return text_doc(
        number,
        f"[[doc:{number}]] {marker} It stores telemetry and evaluates it.",
        metadata=metadata,
        **kwargs,
    )


def run(
    judge: JudgeModelConfig | None,
    name: str,
    documents: list[TelemetryDocument],
    params: Mapping[str, Any] | None = None,
    page: int = 7,
) -> MetricOutcome:
    accumulator = text_metrics(judge)[name].accumulator(params or {}, AppConfig())
    for start in range(0, len(documents), page):
        accumulator.add(documents[start : start + page])
    return accumulator.finish()


@pytest.mark.parametrize("name", AI_METRICS)
def test_scores_are_the_judges_answers(
    server: JudgeServer, judge: JudgeModelConfig, name: str
) -> None:
    scores = [5, 4, 1, 2, 5]
    docs = [doc(i, f"[[judge:score={s}]]") for i, s in enumerate(scores)]
    docs.append(doc(len(scores)))  # no marker: the judge's default answer
    outcome = run(judge, name, docs, {"sample_size": 10})
    expected = [*scores, DEFAULT_SCORE]
    assert outcome.status == "ok", outcome.reason
    assert outcome.values["mean"] == pytest.approx(sum(expected) / len(expected))
    assert outcome.values["evaluated"] == outcome.sample_size == len(expected)
    assert outcome.values["failed"] == 0
    assert outcome.values["tokens"] == len(expected) * (
        server.prompt_tokens + server.completion_tokens
    )
    requests = server.requests
    assert sorted(int(r.doc or -1) for r in requests) == list(range(len(expected)))
    assert {(r.deployment, r.api_version, r.trait) for r in requests} == {
        ("judge-4o", "2024-10-21", TRAIT[name])
    }


def bottom(docs: list[TelemetryDocument], size: int, seed: int) -> list[str]:
    """The sample the metric must draw, computed from its documented definition."""

    def rank(d: TelemetryDocument) -> bytes:
        key = f"{seed}\x1f{d.app_id}\x1f{d.trace_id}\x1f{d.id}".encode()
        return hashlib.blake2b(key, digest_size=16).digest()

    return [d.id.removeprefix("app-1-doc-") for d in sorted(docs, key=rank)[:size]]


def test_sample_is_bounded_and_the_same_on_every_run(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [doc(i) for i in range(40)]
    outcome = run(judge, "text.fluency", docs, {"sample_size": 6, "seed": 7})
    first = [r.doc for r in server.requests]
    assert outcome.values == {
        "eligible": 40, "sampled": 6, "skipped": 0, "mean": DEFAULT_SCORE, "evaluated": 6,
        "failed": 0, "capped": 0, "calls": 6, "tokens": 600,
    }  # fmt: skip
    assert sorted(first, key=str) == sorted(bottom(docs, 6, 7), key=str)

    server.reset()  # a re-run, pages in another order and size: the same documents
    run(judge, "text.fluency", list(reversed(docs)), {"sample_size": 6, "seed": 7}, page=3)
    assert sorted(r.doc or "" for r in server.requests) == sorted(d or "" for d in first)

    server.reset()  # another seed draws another sample
    run(judge, "text.fluency", docs, {"sample_size": 6, "seed": 8})
    assert {r.doc for r in server.requests} != set(first)


def test_call_cap_stops_the_window_after_max_calls(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [doc(i) for i in range(10)]
    outcome = run(judge, "text.coherence", docs, {"sample_size": 10, "max_calls": 3})
    assert len(server.requests) == 3
    # The cap keeps the three highest-priority documents of the sample. They are sent
    # concurrently (concurrency 4), so the order they reach the judge is not theirs.
    assert sorted(r.doc or "" for r in server.requests) == sorted(bottom(docs, 3, 0))
    assert (outcome.values["evaluated"], outcome.values["capped"]) == (3, 7)
    assert outcome.status == "ok"


def test_token_cap_starts_no_call_that_would_overrun_it(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [doc(i) for i in range(10)]
    params = {"sample_size": 10, "max_tokens": 250, "concurrency": 1}
    outcome = run(judge, "text.relevance", docs, params)
    # 100 tokens per call: after two calls a third would reach 300 > 250.
    assert len(server.requests) == 2
    assert outcome.values["tokens"] == 200
    assert (outcome.values["evaluated"], outcome.values["capped"]) == (2, 8)


def test_faults_are_counted_with_their_reasons(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [
        doc(0, "[[judge:score=5]]"),
        doc(1, "[[judge:score=4]]"),
        doc(2, "[[judge:timeout]]"),
        doc(3, "[[judge:throttle]]"),
        doc(4, "[[judge:malformed]]"),
        doc(5, "[[judge:throttle-once]] [[judge:score=3]]"),
    ]
    # Long enough for the ten quick 429 retries on a loaded 2-core machine; the held request
    # ends at it.
    params = {"sample_size": 10, "call_timeout_s": 2.0, "concurrency": 6}
    outcome = run(judge, "text.groundedness", docs, params)
    assert outcome.status == "ok"
    assert outcome.values["mean"] == pytest.approx((5 + 4 + 3) / 3)
    assert (outcome.values["evaluated"], outcome.values["failed"]) == (3, 3)
    assert outcome.details["failures"] == {
        "timeout": 1,
        "throttled (HTTP 429) after retries": 1,
        "malformed judge answer": 1,
    }
    per_doc = Counter(r.doc for r in server.requests)
    # The SDK retries a 429 ten times after the first attempt, honouring Retry-After.
    assert per_doc["3"] == 11
    assert per_doc["5"] == 2  # throttled once, then answered
    assert per_doc["2"] == 1  # held; our call timeout ended it
    # Judge calls are evaluator calls: the SDK's retries are not counted again.
    assert outcome.values["calls"] == 6


def test_every_call_failing_makes_the_metric_unavailable_with_the_reason(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [doc(i, "[[judge:malformed]]") for i in range(3)]
    outcome = run(judge, "text.fluency", docs)
    assert outcome.status == "unavailable"
    assert outcome.reason == "every judge call failed: malformed judge answer (3 of 3)"
    assert outcome.values["failed"] == 3
    assert outcome.values["mean"] is None


def test_a_wrong_key_is_reported_not_raised(server: JudgeServer, judge: JudgeModelConfig) -> None:
    wrong = judge.model_copy(update={"api_key": SecretStr("not-the-key")})
    outcome = run(wrong, "text.fluency", [doc(0)])
    assert outcome.status == "unavailable"
    assert "judge returned HTTP 401" in outcome.reason
    assert len(server.requests) == 0  # refused before the judge logs a call


def test_a_reason_quoting_the_endpoint_is_kept_without_its_secret() -> None:
    """httpx refuses a port that is no number and quotes it; the reason, kept in the results
    (and shown by reports), quoted the text after the host whole ("Invalid port: '...'")."""
    # Made without its checks (which refuse it), as a program using the metrics may.
    pasted = JudgeModelConfig.model_construct(
        endpoint="https://res.openai.azure.com:s3cr3t-key/",
        deployment="judge-4o",
        api_key=SecretStr("a-key"),
    )
    outcome = run(pasted, "text.fluency", [doc(0), doc(1)])
    assert outcome.status == "unavailable"
    assert "InvalidURL: Invalid port: '<redacted>'" in outcome.reason
    assert "s3cr3t" not in outcome.reason + repr(outcome.details)


@pytest.mark.parametrize("name", AI_METRICS)
def test_no_judge_configured_is_unavailable_with_the_reason(server: JudgeServer, name: str) -> None:
    server.reset()
    outcome = run(None, name, [doc(i) for i in range(5)])
    assert outcome.status == "unavailable"
    assert "no judge model configured" in outcome.reason
    assert outcome.values["eligible"] == 5
    assert outcome.values["evaluated"] == 0
    assert server.requests == []


def test_documents_without_the_inputs_are_skipped(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    docs = [text_doc(0, "no context here"), text_doc(1, None, metadata={"context": "c"})]
    outcome = run(judge, "text.groundedness", docs)
    assert outcome.status == "insufficient_data"
    assert outcome.reason == "no document carried output_text and metadata.context"
    assert outcome.values["skipped"] == 2
    assert server.requests == []


async def test_judging_from_inside_a_running_event_loop(
    server: JudgeServer, judge: JudgeModelConfig
) -> None:
    outcome = run(judge, "text.fluency", [doc(0, "[[judge:score=4]]")])
    assert outcome.values["mean"] == 4.0


def test_a_judge_in_the_settings_reaches_the_catalogue(
    server: JudgeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The operator's path: the judge comes from the environment (the key never in a file),
    # the composition root hands it to every AI-assisted metric of the catalogue.
    from evalstream import wiring
    from evalstream.settings import Settings

    server.reset()
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__ENDPOINT", server.endpoint)
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__DEPLOYMENT", "judge-from-env")
    monkeypatch.setenv("EVALSTREAM_COLDPATH__JUDGE__API_KEY", server.key)
    catalogue = wiring.metric_catalogue(Settings())
    accumulator = catalogue["text.relevance"].accumulator({"sample_size": 5}, AppConfig())
    accumulator.add([doc(i, f"[[judge:score={i + 1}]]") for i in range(3)])
    outcome = accumulator.finish()
    assert outcome.status == "ok", outcome.reason
    assert outcome.values["mean"] == pytest.approx(2.0)
    assert {r.deployment for r in server.requests} == {"judge-from-env"}
    assert server.key not in repr(Settings())

    for name in ("ENDPOINT", "DEPLOYMENT", "API_KEY"):
        monkeypatch.delenv(f"EVALSTREAM_COLDPATH__JUDGE__{name}")
    without = wiring.metric_catalogue(Settings())["text.relevance"]
    unavailable = without.accumulator({}, AppConfig())
    unavailable.add([doc(0)])
    assert unavailable.finish().status == "unavailable"
