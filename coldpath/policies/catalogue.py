"""The metric catalogue: every metric a policy can name, by name.

``coldpath.config`` loads ``CATALOGUE`` (``coldpath.catalogue`` setting) and checks each
policy's metrics and parameters against it at start.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from coldpath.policies.base import Metric
from coldpath.policies.drift import DriftMetric
from coldpath.policies.errors import ErrorsMetric
from coldpath.policies.latency import LatencyMetric
from coldpath.policies.scores import ScoresMetric
from coldpath.policies.text import TEXT_METRICS
from coldpath.policies.usage import UsageMetric

BUILT_IN: tuple[Metric, ...] = (
    LatencyMetric(),
    ErrorsMetric(),
    UsageMetric(),
    ScoresMetric(),
    DriftMetric(),
)

_METRICS: dict[str, Metric] = {metric.name: metric for metric in BUILT_IN}

# --- text evaluators (azure-ai-evaluation), owned by coldpath/policies/text/ ---------------
# ``text.*`` metrics; the AI-assisted ones report `unavailable` until a judge is configured.
_METRICS.update(TEXT_METRICS)
# --- end of text evaluators -----------------------------------------------------------------

CATALOGUE: Mapping[str, Metric] = MappingProxyType(_METRICS)


def get_metric(name: str) -> Metric:
    """The metric called ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return CATALOGUE[name]
    except KeyError:
        known = ", ".join(sorted(CATALOGUE))
        raise KeyError(f"unknown metric {name!r} (known: {known})") from None
