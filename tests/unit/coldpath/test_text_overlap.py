"""Code-based text metrics (F1, ROUGE) against values computed by hand in the test."""

from __future__ import annotations

import re
import string
from collections import Counter

import nltk
import pytest

from coldpath.policies.text import F1Metric, RougeMetric, text_metrics
from schemas import AppConfig
from tests.unit.coldpath.text_docs import text_doc

PAIRS = [
    ("The cat sat on the mat.", "A cat was sitting on the mat."),
    ("Paris is the capital of France", "The capital of France is Paris."),
    ("Nothing in common here", "Completely different words"),
    ("An apple a day keeps the doctor away", "an apple every day keeps doctors away"),
]


def squad_tokens(text: str) -> list[str]:
    # SQuAD normalisation: lower case, no punctuation, no articles, split on whitespace.
    lowered = "".join(c for c in text.lower() if c not in set(string.punctuation))
    return re.sub(r"\b(a|an|the)\b", " ", lowered).split()


def f1_by_hand(response: str, reference: str) -> float:
    predicted, truth = squad_tokens(response), squad_tokens(reference)
    common = sum((Counter(predicted) & Counter(truth)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def rouge_tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = (
                table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
            )
    return table[-1][-1]


def prf(overlap: int, predicted: int, truth: int) -> tuple[float, float, float]:
    precision, recall = overlap / predicted, overlap / truth
    f = 0.0 if overlap == 0 else 2 * precision * recall / (precision + recall)
    return precision, recall, f


def documents_for(pairs: list[tuple[str, str]], key: str = "reference") -> list:  # type: ignore[type-arg]
    return [text_doc(i, r, metadata={key: ref}) for i, (r, ref) in enumerate(pairs)]


def test_f1_mean_equals_token_overlap_by_hand() -> None:
    assert f1_by_hand(*PAIRS[0]) == pytest.approx(2 / 3)  # 3 common of 4 and 5 tokens
    acc = F1Metric().accumulator({}, AppConfig())
    docs = documents_for(PAIRS)
    acc.add(docs[:3])  # two pages: the mean does not depend on paging
    acc.add(docs[3:])
    outcome = acc.finish()
    expected = sum(f1_by_hand(r, ref) for r, ref in PAIRS) / len(PAIRS)
    assert outcome.status == "ok"
    assert outcome.values["mean"] == pytest.approx(expected, abs=1e-12)
    assert outcome.values["count"] == 4
    assert outcome.values["skipped"] == 0
    assert outcome.sample_size == 4


def test_rouge_l_equals_longest_common_subsequence_by_hand() -> None:
    acc = RougeMetric().accumulator({}, AppConfig())
    acc.add(documents_for(PAIRS))
    outcome = acc.finish()
    scores = [
        prf(lcs(rouge_tokens(r), rouge_tokens(ref)), len(rouge_tokens(r)), len(rouge_tokens(ref)))
        for r, ref in PAIRS
    ]
    assert outcome.values["precision_mean"] == pytest.approx(sum(s[0] for s in scores) / 4)
    assert outcome.values["recall_mean"] == pytest.approx(sum(s[1] for s in scores) / 4)
    assert outcome.values["mean"] == pytest.approx(sum(s[2] for s in scores) / 4)


def test_rouge_1_by_parameter_counts_clipped_unigram_overlap() -> None:
    acc = RougeMetric().accumulator({"rouge_type": "rouge1"}, AppConfig())
    acc.add(documents_for(PAIRS[:2]))
    expected = []
    for r, ref in PAIRS[:2]:
        predicted, truth = rouge_tokens(r), rouge_tokens(ref)
        overlap = sum((Counter(predicted) & Counter(truth)).values())
        expected.append(prf(overlap, len(predicted), len(truth))[2])
    assert acc.finish().values["mean"] == pytest.approx(sum(expected) / 2)


def test_documents_without_response_or_reference_are_skipped_not_scored() -> None:
    docs = [
        text_doc(0, "Paris", metadata={"ground_truth": "Paris"}),
        text_doc(1, "Lyon", metadata={"reference": "Paris"}),  # other key: skipped
        text_doc(2, None, metadata={"ground_truth": "Paris"}),  # no response
        text_doc(3, "Paris", metadata={"ground_truth": "   "}),  # blank reference
        text_doc(4, "Paris", metadata={"ground_truth": 42}),  # not text
    ]
    acc = F1Metric().accumulator({"reference_key": "ground_truth"}, AppConfig())
    acc.add(docs)
    outcome = acc.finish()
    assert outcome.values == {"mean": 1.0, "count": 1, "skipped": 4, "failed": 0}


def test_no_reference_in_the_window_is_insufficient_data_with_reason() -> None:
    acc = F1Metric().accumulator({}, AppConfig())
    acc.add([text_doc(0, "an answer")])
    outcome = acc.finish()
    assert outcome.status == "insufficient_data"
    assert "metadata.reference" in outcome.reason
    assert outcome.values["mean"] is None
    assert outcome.values["skipped"] == 1


@pytest.mark.parametrize(
    ("name", "params", "named"),
    [
        ("text.f1", {"reference": "x"}, "reference"),
        ("text.rouge", {"rouge_type": "rougeLsum"}, "rouge_type"),
        ("text.f1", {"reference_key": ""}, "reference_key"),
        ("text.fluency", {"sample_size": 0}, "sample_size"),
        ("text.groundedness", {"max_tokens": -1}, "max_tokens"),
        ("text.relevance", {"concurrency": 0}, "concurrency"),
    ],
)
def test_wrong_parameters_are_refused_naming_the_parameter(
    name: str, params: dict[str, object], named: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{named}: "):
        text_metrics()[name].validate_params(params)


def test_code_based_metrics_never_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> bool:
        raise AssertionError(f"nltk.download{args} called")

    monkeypatch.setattr(nltk, "download", refuse)
    for metric in (F1Metric(), RougeMetric()):
        acc = metric.accumulator({}, AppConfig())
        acc.add(documents_for(PAIRS))
        assert acc.finish().values["failed"] == 0


def test_bleu_would_download_nltk_data_which_is_why_it_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        nltk.find("tokenizers/punkt_tab.zip")
        nltk.find("corpora/wordnet.zip")
    except LookupError:
        pass
    else:
        pytest.skip("NLTK data present here: BLEU would run, but not on a fresh machine")
    asked: list[object] = []

    def refuse(*args: object, **kwargs: object) -> bool:
        asked.append(args)
        raise RuntimeError("no download")

    monkeypatch.setattr(nltk, "download", refuse)
    from azure.ai.evaluation import BleuScoreEvaluator

    with pytest.raises(RuntimeError, match="no download"):
        BleuScoreEvaluator()(response="a b c", ground_truth="a b d")
    assert asked
    assert "text.bleu" not in text_metrics()


async def test_accumulators_work_when_called_from_a_running_event_loop() -> None:
    acc = F1Metric().accumulator({}, AppConfig())
    acc.add(documents_for(PAIRS[:1]))
    assert acc.finish().values["mean"] == pytest.approx(2 / 3)
