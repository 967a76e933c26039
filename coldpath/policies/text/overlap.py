"""Code-based text evaluators (F1, ROUGE) of ``azure.ai.evaluation`` over documents that carry a
reference answer.

They run offline. BLEU, GLEU and METEOR are left out on purpose: the SDK tokenises their inputs
with NLTK data (punkt, wordnet, perluniprops) that it downloads at run time when missing,
which a machine without internet cannot do and a batch task should not do.

Per window: mean of the score over documents with both a response and a reference (``count``),
``skipped`` for those without, ``failed`` for documents the evaluator raised on (reasons in
``details``). Each document is scored as its page arrives, so state stays O(1).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from coldpath.policies.base import Accumulator, MetricOutcome, ValueNames
from coldpath.policies.text import _text_sdk as _sdk
from coldpath.policies.text import inputs
from coldpath.policies.text.params import OverlapParams, RougeParams, check
from schemas import AppConfig, TelemetryDocument

# Besides the evaluator's means: documents scored, without a reference, and failed.
COUNTS = ("count", "skipped", "failed")
F1_KEYS = {"mean": "f1_score"}
ROUGE_KEYS = {
    "mean": "rouge",
    "precision_mean": "rouge_properties.rouge_precision",
    "recall_mean": "rouge_properties.rouge_recall",
}


class _Overlap:
    """One code-based evaluator over one window."""

    def __init__(
        self,
        evaluator: _sdk.EvaluatorCall | None,
        keys: Mapping[str, str],
        reference_key: str,
        unavailable: str = "",
    ) -> None:
        self._evaluator = evaluator
        # value name in the outcome -> where the evaluator's result has it ("mean" is required)
        self._keys = keys
        self._reference_key = reference_key
        self._unavailable = unavailable
        self._sums = dict.fromkeys(keys, 0.0)
        self._count = 0
        self._skipped = 0
        self._failures: Counter[str] = Counter()

    def add_reference(self, documents: Sequence[TelemetryDocument]) -> None:
        return None

    def add(self, documents: Sequence[TelemetryDocument]) -> None:
        pairs: list[tuple[str, str]] = []
        for document in documents:
            response = inputs.response(document)
            reference = inputs.from_metadata(document, self._reference_key)
            if response is None or reference is None:
                self._skipped += 1
            else:
                pairs.append((response, reference))
        if not pairs:
            return
        if self._evaluator is None:
            self._failures[self._unavailable] += len(pairs)
            return
        _sdk.run_sync(lambda: self._score(pairs))

    async def _score(self, pairs: list[tuple[str, str]]) -> None:
        assert self._evaluator is not None
        for response, reference in pairs:
            try:
                result = await self._evaluator(response=response, ground_truth=reference)
                values = {name: _sdk.score(result, key) for name, key in self._keys.items()}
            except Exception as exc:  # one bad row must not cost the window its metric
                self._failures[_sdk.describe(exc)] += 1
                continue
            for name, value in values.items():
                self._sums[name] += value
            self._count += 1

    def finish(self) -> MetricOutcome:
        failed = sum(self._failures.values())
        values: dict[str, float | None] = {
            name: (total / self._count if self._count else None)
            for name, total in self._sums.items()
        }
        values.update(zip(COUNTS, (self._count, self._skipped, failed), strict=True))
        details = {"failures": dict(self._failures)} if self._failures else {}
        if self._count:
            return MetricOutcome(values, self._count, details=details)
        if failed:
            reason = self._unavailable or _most_common(self._failures)
            return MetricOutcome(values, 0, "unavailable", reason, details)
        return MetricOutcome(
            values,
            0,
            "insufficient_data",
            f"no document carried both output_text and metadata.{self._reference_key}",
        )


def _most_common(failures: Counter[str]) -> str:
    reason, times = failures.most_common(1)[0]
    return f"{reason} ({times} of {sum(failures.values())} documents)"


def _build(class_name: str, *args: Any, **kwargs: Any) -> tuple[_sdk.EvaluatorCall | None, str]:
    try:
        return _sdk.make_evaluator(class_name, *args, **kwargs), ""
    except _sdk.SdkUnavailable as exc:
        return None, str(exc)


class F1Metric:
    """``text.f1``: token-overlap F1 between the response and the reference (SQuAD style: lower
    case, punctuation and articles removed), via ``F1ScoreEvaluator``."""

    name: ClassVar[str] = "text.f1"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check(OverlapParams, params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return ValueNames((*F1_KEYS, *COUNTS))

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        parsed = check(OverlapParams, params)
        evaluator, why = _build("F1ScoreEvaluator")
        return _Overlap(evaluator, F1_KEYS, parsed.reference_key, why)


class RougeMetric:
    """``text.rouge``: ROUGE (``rouge_type``, default ROUGE-L) F-measure, precision and recall
    between the response and the reference, via ``RougeScoreEvaluator``."""

    name: ClassVar[str] = "text.rouge"
    version: ClassVar[int] = 1
    needs_reference: ClassVar[bool] = False

    def validate_params(self, params: Mapping[str, Any]) -> None:
        check(RougeParams, params)

    def value_names(self, params: Mapping[str, Any]) -> ValueNames:
        return ValueNames((*ROUGE_KEYS, *COUNTS))

    def accumulator(self, params: Mapping[str, Any], app: AppConfig) -> Accumulator:
        parsed = check(RougeParams, params)
        try:
            evaluator, why = _build("RougeScoreEvaluator", _sdk.rouge_type(parsed.rouge_type))
        except _sdk.SdkUnavailable as exc:
            evaluator, why = None, str(exc)
        return _Overlap(evaluator, ROUGE_KEYS, parsed.reference_key, why)
