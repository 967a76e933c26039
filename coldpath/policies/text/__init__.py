"""Text evaluators of ``azure-ai-evaluation`` as cold-path metrics: code-based ones (F1, ROUGE)
on every document with a reference answer, AI-assisted ones (groundedness, relevance,
coherence, fluency) on a bounded, seeded sample per window through an Azure OpenAI judge.

``text_metrics(judge)`` gives them keyed by metric name; ``TEXT_METRICS`` is the same without a
judge (the AI-assisted ones then report ``unavailable``, with the reason, in every window).
"""

from __future__ import annotations

from collections.abc import Mapping

from coldpath.policies.base import Metric
from coldpath.policies.text.judge import (
    CoherenceMetric,
    FluencyMetric,
    GroundednessMetric,
    JudgeMetric,
    JudgeModelConfig,
    RelevanceMetric,
)
from coldpath.policies.text.overlap import F1Metric, RougeMetric


def text_metrics(judge: JudgeModelConfig | None = None) -> dict[str, Metric]:
    """Every text metric by name; the AI-assisted ones judged by ``judge``."""
    metrics: list[Metric] = [
        F1Metric(),
        RougeMetric(),
        GroundednessMetric(judge),
        RelevanceMetric(judge),
        CoherenceMetric(judge),
        FluencyMetric(judge),
    ]
    return {metric.name: metric for metric in metrics}


TEXT_METRICS: Mapping[str, Metric] = text_metrics()


def with_judge(catalogue: Mapping[str, Metric], judge: JudgeModelConfig) -> dict[str, Metric]:
    """``catalogue`` with each AI-assisted metric judged by ``judge`` (the others as they are)."""
    return {
        name: type(metric)(judge) if isinstance(metric, JudgeMetric) else metric
        for name, metric in catalogue.items()
    }


__all__ = [
    "TEXT_METRICS",
    "CoherenceMetric",
    "F1Metric",
    "FluencyMetric",
    "GroundednessMetric",
    "JudgeMetric",
    "JudgeModelConfig",
    "RelevanceMetric",
    "RougeMetric",
    "text_metrics",
    "with_judge",
]
