"""Per-app settings of the hot path: SLOs, burn-rate rules and drift detector parameters.

The drift parameters are in units of the signal's own baseline standard deviation: every drift
detector standardises its input with the mean and deviation it learnt during its warm-up, so one
set of defaults serves latencies in milliseconds and scores in [0, 1] alike. The defaults are
tuned on bench/detectors.py (see bench/results/detectors.md).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.bounds import MAX_COUNT, PositiveCount, PositiveFinite, WholeSeconds

DriftDetectorName = Literal["adwin", "page_hinkley", "ks", "scale", "tail"]
Watched = Literal["latency", "latency_and_scores", "all"]


class BurnRateRule(BaseModel):
    """Alert when the error budget burns ``factor``× too fast over both windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    long_window_s: WholeSeconds
    short_window_s: WholeSeconds
    factor: PositiveFinite
    severity: str = Field(pattern="^(warning|critical)$")


DEFAULT_BURN_RATE_RULES = (
    BurnRateRule(long_window_s=3600, short_window_s=300, factor=14.4, severity="critical"),
    BurnRateRule(long_window_s=6 * 3600, short_window_s=1800, factor=6.0, severity="critical"),
    BurnRateRule(long_window_s=3 * 86400, short_window_s=6 * 3600, factor=1.0, severity="warning"),
)


class SloConfig(BaseModel):
    """Service-level objectives of one app, judged in event time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_threshold_ms: PositiveFinite = 2000.0
    # Fraction of requests allowed above the latency threshold (p95 ≤ threshold → 0.05).
    latency_budget: float = Field(default=0.05, gt=0, lt=1)
    error_budget: float = Field(default=0.01, gt=0, lt=1)
    burn_rate_rules: tuple[BurnRateRule, ...] = DEFAULT_BURN_RATE_RULES
    # Events an app must have produced before its SLOs can alert.
    warmup_events: PositiveCount = 200
    # A rule only fires when its short window holds at least this many events, so that a
    # quiet hour with two requests and one error is not a 50 % error rate.
    min_window_events: PositiveCount = 20
    # Low traffic: a rule also fires when its short window holds fewer than
    # ``min_window_events`` but at least this many events, provided its long window holds
    # ``min_window_events`` (the evidence is then the long window's count, the short window
    # only says "still failing now"). An app at one request per minute has 5 in the 5 min
    # window: without this floor the fast rule could never page it and a full outage waited
    # ~20 min for the 6 h / 30 min rule; with it the page comes after ~9 failures (the 1 h
    # window at 14.4 × 1 %). Trade-off: such an app pages on 3 recent requests when its
    # hour already burnt the budget; a quiet hour (fewer than ``min_window_events``) still
    # never pages. Set it equal to ``min_window_events`` for the strict count rule.
    low_rate_min_events: PositiveCount = 3
    # Each window is counted in this many event-time buckets (a ring per window): the window
    # slides in steps of window/buckets and its state stays a few hundred bytes.
    buckets_per_window: int = Field(default=12, ge=2, le=120)
    # A rule fires only after as much event time as its short window has been seen: a fresh
    # app's 3-day window holds minutes, and a 1× ticket rule would fire on early noise.
    require_full_windows: bool = True
    # Hysteresis: an open burn-rate breach resolves once no rule of its severity has fired for
    # this long in event time.
    resolve_after_s: WholeSeconds = 600


class DetectorConfig(BaseModel):
    """Drift detection parameters (river's ADWIN / PageHinkley and windowed KS).

    Thresholds and deltas are in units of the baseline standard deviation (see module doc).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Page-Hinkley is shipped and tuned but not on by default: ADWIN finds the same mean
    # shifts with fewer false alarms, and each detector costs ~1 µs per signal per event.
    detectors: tuple[DriftDetectorName, ...] = ("adwin", "ks", "scale", "tail")
    adwin_delta: float = Field(default=1e-4, gt=0, lt=1)
    adwin_clock: PositiveCount = 32
    # ADWIN's state grows with log(width); past this width it starts a fresh window so that
    # the state of one (app, signal) stays small.
    adwin_max_width: PositiveCount = 5_000
    # Smallest change worth an alert, in baseline deviations: ADWIN cuts its window on any
    # significant difference of means, and given a few thousand values a slow seasonal swing
    # of ±0.25σ is significant. A cut whose dropped and kept parts differ by less than this
    # is adaptation (the window follows the signal), not an alarm. 0.3 keeps seasonal
    # ±0.25σ streams quiet (0 false alarms in bench/detectors.py; 0.25 gave 0.3 per 100k)
    # and still finds every 1σ step; half of 0.5σ steps are then left to the KS test.
    # 0 alerts on every cut, as river's ADWIN does.
    adwin_min_effect: float = Field(default=0.3, ge=0, allow_inf_nan=False)
    # Buckets of each size ADWIN keeps (river's default is 5): its state is about
    # 16 bytes × this × log2(width). 2 halves the state of 5; steps of 1σ and more are found
    # as fast (bench/detectors.py), cut points are coarser for small, slow changes.
    adwin_max_buckets: int = Field(default=2, ge=2, le=20)
    # CUSUM-style: reference value 0.25σ (half the smallest shift worth finding), threshold
    # 25σ. No fading (alpha 1): river's default 0.9999 turns the cumulative sums into a
    # stationary process whose swings cross any useful threshold on stable data.
    # The spread detector (Page-Hinkley on |z|, stream/hotpath/scale.py: calibration there):
    # reference 0.15 (half the change of the mean |deviation| at variance ×2), threshold 40.
    scale_threshold: PositiveFinite = 40.0
    scale_delta: float = Field(default=0.15, ge=0, allow_inf_nan=False)
    # Which signals the spread detector watches: latency (the default: a wider spread of
    # latency is a regression users feel), also the scores (slow quality ramps), or every
    # drift signal (also output length and token totals, whose spread moves with the mix of
    # prompts). It costs about 0.8 µs per watched signal per event: on the processor's
    # simulated traffic (7.6 signals per event) latency alone keeps the hot path within
    # +25 % of its cost without it, latency and scores do not.
    scale_on: Watched = "latency"
    # The tail detector (stream/hotpath/tail.py: calibration there) counts values more than
    # ``tail_sigmas`` baseline deviations above the baseline mean per block of
    # ``tail_window`` values and tests the newest ``tail_recent`` blocks against up to
    # ``tail_reference`` blocks before them (exact binomial test, level ``tail_alpha`` per
    # block). It finds regressions of the slowest requests that leave the mean alone (p99 ×3
    # on a lognormal latency); on latency by default, as the spread detector.
    tail_on: Watched = "latency"
    tail_sigmas: PositiveFinite = 8.0
    tail_window: int = Field(default=500, ge=50, le=MAX_COUNT)
    tail_reference: int = Field(default=10, ge=2, le=50)
    tail_recent: int = Field(default=4, ge=1, le=20)
    tail_alpha: float = Field(default=1e-3, gt=0, lt=1)
    page_hinkley_threshold: PositiveFinite = 25.0
    page_hinkley_delta: float = Field(default=0.25, ge=0, allow_inf_nan=False)
    page_hinkley_min_instances: PositiveCount = 30
    page_hinkley_alpha: float = Field(default=1.0, gt=0, le=1)
    ks_window: PositiveCount = 500
    ks_alpha: float = Field(default=1e-4, gt=0, lt=1)
    # Each window is compared with the window this many windows before it (a sliding
    # reference). A fixed reference eventually differs from any signal with a slow seasonal
    # swing; 2 (skip the previous window) still compares a change that starts mid-window as
    # a whole window against one from before it. 1 loses such changes (recall 0.70 on 0.5σ
    # steps against 1.00 for 2, in bench/detectors.py).
    ks_reference_lag: int = Field(default=2, ge=1, le=8)
    # The KS test compares histograms over this many equal-probability bins of a standard
    # normal (in baseline units); bins keep the state small and the per-event cost a bisect.
    ks_bins: int = Field(default=32, ge=4, le=256)
    warmup_events: PositiveCount = 200
    # Standardised values are clipped to ±this many deviations so that one heavy-tailed
    # outlier cannot move a mean-shift detector on its own.
    winsorize_sigma: PositiveFinite = 4.0
    # Hysteresis: an open drift breach resolves after this many events without a detection.
    resolve_after_events: PositiveCount = 1000
    # ... and once its detector's new baseline is back to the one it fired against (within
    # 0.3σ in level and ×1.3 in spread): a detector that adapted to a lasting regression is
    # quiet while the regression goes on, and the breach (so the incident) would resolve in
    # the middle of it. A shift still there after this many quiet events is taken as the new
    # normal and the breach resolves (stream/hotpath/lifecycle.py). 0: resolve on quiet alone.
    resolve_shifted_after_events: int = Field(default=10_000, ge=0, le=MAX_COUNT)
    # Score names are producer-chosen; beyond this many per app new names are not tracked.
    max_score_signals: PositiveCount = 16
