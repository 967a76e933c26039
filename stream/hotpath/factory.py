"""Which detectors watch which signal, built from an app's configuration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.appconfig import AppConfig
from schemas.breach import BreachKind, Severity
from stream.hotpath.adwin import Adwin
from stream.hotpath.burn_rate import BurnRate
from stream.hotpath.detector import Detector
from stream.hotpath.ks import WindowedKS
from stream.hotpath.page_hinkley import PageHinkley
from stream.hotpath.scale import Scale
from stream.hotpath.tail import Tail

LATENCY = "latency_ms"
ERROR = "error"
OUTPUT_CHARS = "output_chars"
TOKENS_TOTAL = "tokens_total"
SCORE_PREFIX = "score:"


def _watches(watch: str, signal: str) -> bool:
    """Whether a detector on ``watch`` (latency, latency_and_scores, all) sees ``signal``."""
    return (
        watch == "all"
        or signal == LATENCY
        or (watch == "latency_and_scores" and signal.startswith(SCORE_PREFIX))
    )


def drift_detectors(config: AppConfig, signal: str = LATENCY) -> list[Detector]:
    settings = config.detectors
    if not settings.enabled:
        return []
    warmup, clip = settings.warmup_events, settings.winsorize_sigma
    built: list[Detector] = []
    for name in settings.detectors:
        if name == "adwin":
            built.append(
                Adwin(
                    delta=settings.adwin_delta,
                    clock=settings.adwin_clock,
                    max_width=settings.adwin_max_width,
                    warmup=warmup,
                    clip=clip,
                    min_effect=settings.adwin_min_effect,
                    max_buckets=settings.adwin_max_buckets,
                )
            )
        elif name == "scale":
            if not _watches(settings.scale_on, signal):
                continue
            built.append(
                Scale(
                    threshold=settings.scale_threshold,
                    delta=settings.scale_delta,
                    min_instances=settings.page_hinkley_min_instances,
                    alpha=1.0,
                    warmup=warmup,
                    clip=clip,
                )
            )
        elif name == "tail":
            if not _watches(settings.tail_on, signal):
                continue
            built.append(
                Tail(
                    sigmas=settings.tail_sigmas,
                    window=settings.tail_window,
                    reference=settings.tail_reference,
                    recent=settings.tail_recent,
                    alpha=settings.tail_alpha,
                    warmup=warmup,
                    clip=clip,
                )
            )
        elif name == "page_hinkley":
            built.append(
                PageHinkley(
                    threshold=settings.page_hinkley_threshold,
                    delta=settings.page_hinkley_delta,
                    min_instances=settings.page_hinkley_min_instances,
                    alpha=settings.page_hinkley_alpha,
                    warmup=warmup,
                    clip=clip,
                )
            )
        else:
            built.append(
                WindowedKS(
                    window=settings.ks_window,
                    alpha=settings.ks_alpha,
                    bins=settings.ks_bins,
                    warmup=warmup,
                    clip=clip,
                    lag=settings.ks_reference_lag,
                )
            )
    return built


def burn_rate_detectors(config: AppConfig, signal: str) -> list[Detector]:
    """One detector per severity that has rules: critical first."""
    slo = config.slo
    if signal == LATENCY:
        kind, budget, bad_above = BreachKind.LATENCY, slo.latency_budget, slo.latency_threshold_ms
    else:
        kind, budget, bad_above = BreachKind.ERROR_RATE, slo.error_budget, 0.5
    built: list[Detector] = []
    for severity in (Severity.CRITICAL, Severity.WARNING):
        rules = tuple(r for r in slo.burn_rate_rules if r.severity == severity.value)
        if rules:
            built.append(
                BurnRate(
                    rules,
                    budget=budget,
                    bad_above=bad_above,
                    kind=kind,
                    severity=severity,
                    warmup=slo.warmup_events,
                    min_window_events=slo.min_window_events,
                    low_rate_min_events=slo.low_rate_min_events,
                    buckets=slo.buckets_per_window,
                    full_windows=slo.require_full_windows,
                )
            )
    return built


def message_format(name: str) -> Callable[[list[Any]], str] | None:
    """The ``format_message`` of the shipped detector called ``name`` (None for others): a
    snapshot keeps a message's arguments and makes its text again with it."""
    if name.startswith("burn_"):
        return BurnRate.format_message
    shipped: dict[str, Any] = {
        "adwin": Adwin,
        "ks": WindowedKS,
        "scale": Scale,
        "tail": Tail,
        "page_hinkley": PageHinkley,
    }
    detector = shipped.get(name)
    return None if detector is None else detector.format_message


def detectors_for(config: AppConfig, signal: str) -> list[Detector]:
    """Latency: drift and its SLO; errors: their SLO (a 0/1 flag is judged against its budget,
    not for drift); output length, tokens and scores: drift."""
    if signal == LATENCY:
        return drift_detectors(config, signal) + burn_rate_detectors(config, signal)
    if signal == ERROR:
        return burn_rate_detectors(config, signal)
    return drift_detectors(config, signal)
