"""Per-app settings of the hot path: SLOs, burn-rate rules and drift detector parameters."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt


class BurnRateRule(BaseModel):
    """Alert when the error budget burns ``factor``× too fast over both windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    long_window_s: PositiveInt
    short_window_s: PositiveInt
    factor: PositiveFloat
    severity: str = Field(pattern="^(warning|critical)$")


DEFAULT_BURN_RATE_RULES = (
    BurnRateRule(long_window_s=3600, short_window_s=300, factor=14.4, severity="critical"),
    BurnRateRule(long_window_s=6 * 3600, short_window_s=1800, factor=6.0, severity="critical"),
    BurnRateRule(long_window_s=3 * 86400, short_window_s=6 * 3600, factor=1.0, severity="warning"),
)


class SloConfig(BaseModel):
    """Service-level objectives of one app, judged in event time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_threshold_ms: PositiveFloat = 2000.0
    # Fraction of requests allowed above the latency threshold (p95 ≤ threshold → 0.05).
    latency_budget: float = Field(default=0.05, gt=0, lt=1)
    error_budget: float = Field(default=0.01, gt=0, lt=1)
    burn_rate_rules: tuple[BurnRateRule, ...] = DEFAULT_BURN_RATE_RULES
    # Events an app must have produced before its SLOs can alert.
    warmup_events: PositiveInt = 200


class DetectorConfig(BaseModel):
    """Drift detection parameters (river's ADWIN / PageHinkley and windowed KS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    adwin_delta: float = Field(default=0.002, gt=0, lt=1)
    page_hinkley_threshold: PositiveFloat = 50.0
    page_hinkley_delta: float = Field(default=0.005, ge=0)
    ks_window: PositiveInt = 500
    ks_alpha: float = Field(default=0.001, gt=0, lt=1)
    warmup_events: PositiveInt = 200
