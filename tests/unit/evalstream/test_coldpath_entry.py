"""The deploy entry points refuse policies the metric catalogue refuses before planning."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coldpath.exceptions import PolicyConfigError
from evalstream.coldpath_entry import plan_due, trigger_due
from evalstream.settings import Settings
from schemas import EvaluationPolicy, MetricSpec, Thresholds

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# A threshold on a value the latency metric never reports: it would never be judged.
MISSPELT = EvaluationPolicy(
    name="speed",
    metrics=(
        MetricSpec(
            metric="latency",
            thresholds={"p959": Thresholds.model_validate({"warning": {"max": 1.0}})},
        ),
    ),
)


def settings_with(tmp_path: Path, *policies: EvaluationPolicy) -> Settings:
    settings = Settings()
    return settings.model_copy(
        update={
            "coldpath": settings.coldpath.model_copy(update={"policies": policies}),
            "embedded": settings.embedded.model_copy(update={"data_dir": tmp_path}),
        }
    )


@pytest.mark.parametrize("entry", ["trigger_due", "plan_due"])
def test_an_entry_point_refuses_policies_the_catalogue_refuses_before_planning(
    tmp_path: Path, entry: str
) -> None:
    # Before, the Functions timer and the Durable plan staged manifests of the policy (and on
    # Azure handed them to Batch, whose every task then failed on the same setting).
    settings = settings_with(tmp_path, MISSPELT)
    call = trigger_due(settings, NOW) if entry == "trigger_due" else plan_due(settings, NOW)
    with pytest.raises(PolicyConfigError) as refused:
        asyncio.run(call)
    assert str(refused.value).startswith(
        "coldpath.policies[0].metrics[0].thresholds: policy 'speed', metric 'latency' has no "
        "value 'p959' to judge"
    )
    assert list(tmp_path.iterdir()) == []  # no evaluation store opened, nothing staged
