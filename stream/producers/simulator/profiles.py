"""The traffic shape of each simulated app (models, latencies, scores, error rate, versions),
drawn once from the seed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np

SCORE_NAMES: Final[tuple[str, ...]] = (
    "groundedness",
    "relevance",
    "toxicity",
    "coherence",
    "fluency",
)
# (mean, sigma) of each score before the per-app jitter; toxicity hugs zero on purpose.
_SCORE_BASE: Final = {
    "groundedness": (0.82, 0.08),
    "relevance": (0.78, 0.09),
    "toxicity": (0.04, 0.025),
    "coherence": (0.86, 0.05),
    "fluency": (0.89, 0.04),
}
# (model_id, model_version, typical median latency in ms)
_MODELS: Final = (
    ("gpt-4o", "2024-08-06", 900.0),
    ("gpt-4o-mini", "2024-07-18", 420.0),
    ("phi-3-mini", "3.5-instruct", 320.0),
    ("phi-3-medium", "128k-instruct", 650.0),
    ("llama-3.1-8b", "instruct-v1", 380.0),
    ("mistral-large", "2407", 1100.0),
)
_BASE_ERROR_RATE: Final = 0.005


@dataclass(frozen=True)
class ModelProfile:
    model_id: str
    model_version: str
    weight: float
    median_latency_ms: float
    latency_sigma: float


@dataclass(frozen=True)
class ScoreProfile:
    name: str
    mean: float
    sigma: float


@dataclass(frozen=True)
class AppProfile:
    """The traffic shape of one simulated app (drawn from the seed)."""

    app_id: str
    share: float
    models: tuple[ModelProfile, ...]
    scores: tuple[ScoreProfile, ...]
    error_rate: float
    system_tokens: int
    app_version: str


def draw_profiles(apps: int, rng: np.random.Generator) -> list[AppProfile]:
    # Zipf-like traffic shares: app-000 is the busiest.
    weights = 1.0 / np.arange(1, apps + 1) ** 1.1
    shares = (weights / weights.sum()).tolist()
    width = max(3, len(str(apps - 1)))
    profiles = []
    for a in range(apps):
        n_models = 1 if rng.random() < 0.4 else 2
        picks = rng.choice(len(_MODELS), size=n_models, replace=False).tolist()
        first_weight = 1.0 if n_models == 1 else float(rng.uniform(0.6, 0.9))
        models = []
        for slot, pick in enumerate(picks):
            model_id, version, median = _MODELS[pick]
            median = float(np.clip(median * rng.uniform(0.8, 1.25), 300.0, 1200.0))
            models.append(
                ModelProfile(
                    model_id=model_id,
                    model_version=version,
                    weight=first_weight if slot == 0 else 1.0 - first_weight,
                    median_latency_ms=round(median, 1),
                    latency_sigma=round(float(rng.uniform(0.45, 0.75)), 3),
                )
            )
        # Every app reports relevance; the others are a per-app subset.
        names = [n for n in SCORE_NAMES if n == "relevance" or rng.random() < 0.55]
        scores = []
        for name in names:
            mean, sigma = _SCORE_BASE[name]
            scores.append(
                ScoreProfile(
                    name=name,
                    mean=round(float(mean + rng.uniform(-0.3, 0.3) * sigma), 4),
                    sigma=round(float(sigma * rng.uniform(0.8, 1.2)), 4),
                )
            )
        profiles.append(
            AppProfile(
                app_id=f"app-{a:0{width}d}",
                share=shares[a],
                models=tuple(models),
                scores=tuple(scores),
                error_rate=round(float(_BASE_ERROR_RATE * rng.uniform(0.6, 1.4)), 5),
                system_tokens=int(rng.integers(60, 400)),
                app_version=f"{rng.integers(1, 4)}.{rng.integers(0, 12)}.{rng.integers(0, 30)}",
            )
        )
    return profiles
