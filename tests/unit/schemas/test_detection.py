"""Detection settings: defaults, bounds, and that the factory builds what they say."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from schemas.appconfig import AppConfig
from schemas.detection import DetectorConfig
from stream.hotpath.adwin import Adwin
from stream.hotpath.factory import drift_detectors
from stream.hotpath.ks import WindowedKS


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
    detectors = DetectorConfig(adwin_min_effect=0.5, adwin_max_buckets=5, ks_reference_lag=3)
    adwin, ks = drift_detectors(AppConfig(detectors=detectors))
    assert isinstance(adwin, Adwin) and isinstance(ks, WindowedKS)
    assert (adwin.min_effect, adwin.max_buckets, ks.lag) == (0.5, 5, 3)
