"""Distances between a reference window and the evaluated one: PSI and two-sample KS for numbers,
Jensen–Shannon divergence for categories. Pure functions of the two ECDFs / count tables.

Definitions (the tests restate them by hand):

* **KS** ``D = max_x |F_ref(x) − F_cur(x)|`` over every observed value (the ECDFs only jump
  there), so it is exact on the distributions given.
* **PSI** over ``bins`` buckets cut at the reference's quantiles ``k/bins`` (k = 1…bins−1,
  linear interpolation, duplicates merged; bucket k is ``(e_(k−1), e_k]``, the outer ones open):
  ``Σ (c − r)·ln(c/r)`` with each share floored at ``PSI_FLOOR`` (1e-4) so an empty bucket gives a
  large but finite term instead of infinity.
* **Jensen–Shannon** divergence in bits (0 = same shares, 1 = disjoint):
  ``½·KL(P‖M) + ½·KL(Q‖M)``, ``M = (P+Q)/2``, with ``0·log 0 = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping

import numpy as np

from coldpath.policies.sketch import Distribution

PSI_FLOOR = 1e-4


def ks_statistic(reference: Distribution, current: Distribution) -> float:
    points = np.union1d(reference.values, current.values)
    return float(np.max(np.abs(reference.cdf(points) - current.cdf(points))))


def psi(reference: Distribution, current: Distribution, bins: int) -> float:
    edges = np.unique(np.asarray(reference.quantiles([k / bins for k in range(1, bins)])))
    reference_share = np.diff(np.concatenate([[0.0], reference.cdf(edges), [1.0]]))
    current_share = np.diff(np.concatenate([[0.0], current.cdf(edges), [1.0]]))
    r = np.maximum(reference_share, PSI_FLOOR)
    c = np.maximum(current_share, PSI_FLOOR)
    return float(np.sum((c - r) * np.log(c / r)))


def jensen_shannon(reference: Mapping[Hashable, int], current: Mapping[Hashable, int]) -> float:
    keys = list(reference.keys() | current.keys())
    p = np.array([reference.get(key, 0) for key in keys], dtype=np.float64)
    q = np.array([current.get(key, 0) for key in keys], dtype=np.float64)
    p /= p.sum()
    q /= q.sum()
    m = (p + q) / 2
    return float(_kl_bits(p, m) / 2 + _kl_bits(q, m) / 2)


def _kl_bits(p: np.ndarray, m: np.ndarray) -> float:
    held = p > 0  # where p > 0, m ≥ p/2 > 0
    return float(np.sum(p[held] * np.log2(p[held] / m[held])))


def clamp_unit(value: float) -> float:
    """Rounding can leave a divergence a hair outside [0, 1]; it is reported inside."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else value
