"""Detection settings: defaults, bounds, and that the factory builds what they say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.appconfig import AppConfig
from schemas.detection import DetectorConfig
from stream.hotpath.adwin import Adwin
from stream.hotpath.factory import OUTPUT_CHARS, TOKENS_TOTAL, drift_detectors
from stream.hotpath.ks import WindowedKS
from stream.hotpath.scale import Scale
from stream.hotpath.tail import Tail


def test_defaults_of_the_seasonal_safeguards() -> None:
    config = DetectorConfig()
    assert config.adwin_min_effect == 0.3
    assert config.adwin_max_buckets == 2
    assert config.ks_reference_lag == 2


@pytest.mark.parametrize(
    "override",
    [
        {"adwin_min_effect": -0.1},
        {"adwin_max_buckets": 1},
        {"ks_reference_lag": 0},
        {"ks_reference_lag": 9},
    ],
)
def test_out_of_range_values_are_refused(override: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        DetectorConfig.model_validate(override)


def test_the_factory_passes_them_on() -> None:
    detectors = DetectorConfig(
        adwin_min_effect=0.5,
        adwin_max_buckets=5,
        ks_reference_lag=3,
        scale_threshold=30.0,
        scale_delta=0.2,
        tail_sigmas=6.0,
        tail_window=400,
        tail_reference=8,
        tail_recent=3,
        tail_alpha=1e-4,
    )
    adwin, ks, scale, tail = drift_detectors(AppConfig(detectors=detectors))
    assert isinstance(adwin, Adwin) and isinstance(ks, WindowedKS) and isinstance(scale, Scale)
    assert isinstance(tail, Tail)
    assert (adwin.min_effect, adwin.max_buckets, ks.lag) == (0.5, 5, 3)
    assert (scale.threshold, scale.delta, scale.alpha) == (30.0, 0.2, 1.0)
    assert (tail.sigmas, tail.window, tail.reference, tail.recent, tail.alpha) == (
        6.0,
        400,
        8,
        3,
        1e-4,
    )

    # The spread and tail detectors watch latency; scores and sizes only on request.
    def names(config: AppConfig, signal: str) -> list[str]:
        return [d.name for d in drift_detectors(config, signal)]

    assert names(AppConfig(), OUTPUT_CHARS) == names(AppConfig(), "score:x") == ["adwin", "ks"]
    scores = AppConfig(detectors=DetectorConfig(scale_on="latency_and_scores"))
    assert names(scores, "score:x") == ["adwin", "ks", "scale"]
    assert names(scores, TOKENS_TOTAL) == ["adwin", "ks"]
    every = AppConfig(detectors=DetectorConfig(scale_on="all"))
    assert names(every, TOKENS_TOTAL) == ["adwin", "ks", "scale"]
    tails = AppConfig(detectors=DetectorConfig(tail_on="latency_and_scores"))
    assert names(tails, "score:x") == ["adwin", "ks", "tail"]
    assert names(tails, OUTPUT_CHARS) == ["adwin", "ks"]
