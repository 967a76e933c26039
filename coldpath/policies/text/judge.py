"""AI-assisted text evaluators (groundedness, relevance, coherence, fluency) of
``azure.ai.evaluation``, judged by an Azure OpenAI deployment on a bounded sample per window.

``add`` only draws the sample (``sampling.BottomK``: deterministic, O(sample_size) memory);
``finish`` sends it to the judge, smallest priority first, ``concurrency`` calls at a time,
within the window's cost cap:

- ``max_calls``: at most this many evaluator calls (the SDK's own retries of one call, on 429
  or 5xx, are not counted again);
- ``max_tokens``: a call starts only while the tokens reported so far plus, for every call in
  flight and this one, the largest per-call usage seen so far stay within the cap. Before the
  first answer that estimate is 0, so the first ``concurrency`` calls may overrun it together.

Outcome values: ``mean`` of the scores (1-5), ``evaluated``, ``failed`` (timeout, 429 after the
SDK's retries, malformed answer, other SDK error; reasons counted in ``details["failures"]``),
``capped`` (sampled but left out by the cost cap), ``sampled``, ``eligible`` (documents with the
evaluator's inputs), ``skipped`` (documents without), ``calls`` and ``tokens``. No model
configured, or every call failed: ``status="unavailable"`` with the reason — never a raise.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.text import _text_sdk as _sdk
from coldpath.policies.text import inputs
from coldpath.policies.text.params import JudgeParams, check
from coldpath.policies.text.sampling import BottomK
from common import redact
from schemas import AppConfig, TelemetryDocument

DEFAULT_API_VERSION = "2024-10-21"
VALUE_NAMES = ValueNames(
    ("mean", "evaluated", "failed", "capped", "sampled", "eligible", "skipped", "calls", "tokens")
)


class JudgeModelConfig(BaseModel):
    """The Azure OpenAI deployment that judges (``AzureOpenAIModelConfiguration`` of the SDK).

    Composed into the settings by the composition root and handed to ``text_metrics``; the key
    never enters a policy's parameters, a manifest or a result.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoint: str = Field(min_length=1, description="https://<resource>.openai.azure.com")
    deployment: str = Field(min_length=1)
    api_version: str = DEFAULT_API_VERSION
    api_key: SecretStr

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, endpoint: str) -> str:
        # A path is allowed (a gateway in front of the deployment); a key in the URL is not,
        # and the SDK's errors quote what it cannot read of it ("Invalid port: '...'").
        example = "https://RESOURCE.openai.azure.com; the key goes in coldpath.judge.api_key"
        return redact.check_account_url(endpoint, example, path=True)

    def sdk_configuration(self) -> dict[str, str]:
        return {
            "type": "azure_openai",
            "azure_endpoint": self.endpoint,
            "azure_deployment": self.deployment,
            "api_version": self.api_version,
            "api_key": self.api_key.get_secret_value(),
        }


@dataclass(frozen=True)
class _Row:
    document_id: str
    inputs: Mapping[str, str]


@dataclass
class _Tally:
    scores: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    tokens: int = 0
    in_flight: int = 0
    largest_call: int = 0
    capped: int = 0


class _JudgeAccumulator:
    def __init__(
        self, metric: JudgeMetric, params: JudgeParams, model: JudgeModelConfig | None
    ) -> None:
        self._metric = metric
        self._params = params
        self._model = model
        self._sample: BottomK[_Row] = BottomK(params.sample_size, params.seed)
        self._skipped = 0

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        return None

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        for document in documents:
            row = self._metric.inputs_of(document, self._params)
            if row is None:
                self._skipped += 1
            else:
                self._sample.offer(document, _Row(document.id, row))

    def finish(self) -> MetricOutcome:
        rows = self._sample.items()
        tally = _Tally()
        base: dict[str, float | None] = {
            "eligible": self._sample.offered,
            "sampled": len(rows),
            "skipped": self._skipped,
        }
        if not rows:
            return MetricOutcome(
                {**base, "mean": None, "evaluated": 0, "failed": 0, "capped": 0},
                0,
                "insufficient_data",
                f"no document carried {self._metric.needs_description(self._params)}",
            )
        if self._model is None:
            return MetricOutcome(
                {**base, "mean": None, "evaluated": 0, "failed": 0, "capped": len(rows)},
                0,
                "unavailable",
                "no judge model configured (an Azure OpenAI deployment for the text evaluators)",
            )
        try:
            evaluator = _sdk.make_evaluator(
                self._metric.evaluator_class, self._model.sdk_configuration()
            )
        except _sdk.SdkUnavailable as exc:
            return MetricOutcome(
                {**base, "mean": None, "evaluated": 0, "failed": 0, "capped": len(rows)},
                0,
                "unavailable",
                self._said(exc),
            )
        _sdk.run_sync(lambda: self._judge(evaluator, rows, tally))
        return self._outcome(base, tally)

    async def _judge(self, evaluator: _sdk.EvaluatorCall, rows: list[_Row], tally: _Tally) -> None:
        queue = deque(rows)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self._params.concurrency, len(rows))):
                group.create_task(self._worker(evaluator, queue, tally))
        tally.capped = len(queue)

    def _may_start(self, tally: _Tally) -> bool:
        if tally.calls >= self._params.call_limit:
            return False
        projected = tally.tokens + (tally.in_flight + 1) * tally.largest_call
        return projected <= self._params.max_tokens and tally.tokens < self._params.max_tokens

    async def _worker(
        self, evaluator: _sdk.EvaluatorCall, queue: deque[_Row], tally: _Tally
    ) -> None:
        # Workers share one loop: the checks below and the pops are never interleaved.
        while queue and self._may_start(tally):
            row = queue.popleft()
            tally.calls += 1
            tally.in_flight += 1
            try:
                async with asyncio.timeout(self._params.call_timeout_s):
                    result = await evaluator(**row.inputs)
                used = _sdk.tokens_used(result, self._metric.result_key)
                tally.tokens += used
                tally.largest_call = max(tally.largest_call, used)
                tally.scores.append(_sdk.score(result, self._metric.result_key))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of one call is counted, never raised
                tally.failures[self._said(exc)] += 1
            finally:
                tally.in_flight -= 1

    def _said(self, exc: BaseException) -> str:
        """The reason of a failed call, as results and reports keep it: without what of the
        configured endpoint may be a secret (an error may quote it: "Invalid port: '...'")."""
        reason = str(exc) if isinstance(exc, _sdk.SdkUnavailable) else _sdk.describe(exc)
        return redact.scrub(reason, self._model.endpoint) if self._model else reason

    def _outcome(self, base: dict[str, float | None], tally: _Tally) -> MetricOutcome:
        evaluated = len(tally.scores)
        failed = sum(tally.failures.values())
        values: dict[str, float | None] = {
            **base,
            "mean": sum(tally.scores) / evaluated if evaluated else None,
            "evaluated": evaluated,
            "failed": failed,
            "capped": tally.capped,
            "calls": tally.calls,
            "tokens": tally.tokens,
        }
        details: dict[str, Any] = {"failures": dict(tally.failures)} if failed else {}
        if evaluated:
            return MetricOutcome(values, evaluated, details=details)
        reason, times = tally.failures.most_common(1)[0]
        return MetricOutcome(
            values,
            0,
            "unavailable",
            f"every judge call failed: {reason} ({times} of {failed})",
            details,
        )


class JudgeMetric:
    """Base of the AI-assisted metrics; subclasses say which evaluator and which inputs.

    ``judge`` is the deployment to call; without one every window's outcome is unavailable
    with that reason, so a policy can name these metrics before a judge is configured.
    """

    name: ClassVar[str]
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False
    evaluator_class: ClassVar[str]
    result_key: ClassVar[str]
    # Inputs the evaluator needs, by its keyword: "query", "response", "context".
    required: ClassVar[tuple[str, ...]]

    def __init__(self, judge: JudgeModelConfig | None = None) -> None:
        self.judge = judge

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check(JudgeParams, params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return VALUE_NAMES

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        return _JudgeAccumulator(self, check(JudgeParams, params), self.judge)

    def inputs_of(
        self, document: TelemetryDocument, params: JudgeParams
    ) -> Mapping[str, str] | None:
        found = {
            "query": inputs.query(document),
            "response": inputs.response(document),
            "context": inputs.from_metadata(document, params.context_key),
        }
        picked = {name: found[name] for name in self.required}
        if any(value is None for value in picked.values()):
            return None
        return {name: value for name, value in picked.items() if value is not None}

    def needs_description(self, params: JudgeParams) -> str:
        where = {
            "query": "input_text",
            "response": "output_text",
            "context": f"metadata.{params.context_key}",
        }
        return " and ".join(where[name] for name in self.required)


class GroundednessMetric(JudgeMetric):
    """``text.groundedness``: is the response supported by ``metadata.context``?"""

    name: ClassVar[str] = "text.groundedness"
    evaluator_class: ClassVar[str] = "GroundednessEvaluator"
    result_key: ClassVar[str] = "groundedness"
    # Without the query: the SDK switches prompts on an evaluator instance when a query comes
    # with some rows and not others, which concurrent calls on one instance must not race.
    required: ClassVar[tuple[str, ...]] = ("response", "context")


class RelevanceMetric(JudgeMetric):
    """``text.relevance``: does the response address the query?"""

    name: ClassVar[str] = "text.relevance"
    evaluator_class: ClassVar[str] = "RelevanceEvaluator"
    result_key: ClassVar[str] = "relevance"
    required: ClassVar[tuple[str, ...]] = ("query", "response")


class CoherenceMetric(JudgeMetric):
    """``text.coherence``: is the response logically ordered and easy to follow?"""

    name: ClassVar[str] = "text.coherence"
    evaluator_class: ClassVar[str] = "CoherenceEvaluator"
    result_key: ClassVar[str] = "coherence"
    required: ClassVar[tuple[str, ...]] = ("query", "response")


class FluencyMetric(JudgeMetric):
    """``text.fluency``: grammar, vocabulary and readability of the response alone."""

    name: ClassVar[str] = "text.fluency"
    evaluator_class: ClassVar[str] = "FluencyEvaluator"
    result_key: ClassVar[str] = "fluency"
    required: ClassVar[tuple[str, ...]] = ("response",)
