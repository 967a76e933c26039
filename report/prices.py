"""Token prices of the report's cost series: currency per 1,000 tokens, per model.

The composition root builds the table from the cold path's ``usage`` metric parameters, so the
report and the evaluations price tokens alike; a model without a price (and no default) is
counted as unpriced, never as free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class TokenPrice:
    input_per_1k: float
    output_per_1k: float


@dataclass(frozen=True)
class PriceTable:
    """Prices by ``model_id``; ``default`` for any other model (None: others are unpriced)."""

    prices: Mapping[str, TokenPrice] = field(default_factory=dict)
    default: TokenPrice | None = None

    def per_token(
        self, model_ids: Sequence[str | None]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Input and output price per token of each model id; NaN where there is no price."""
        rows = {
            model: (price.input_per_1k / 1000.0, price.output_per_1k / 1000.0)
            for model, price in self.prices.items()
        }
        fallback = (
            (self.default.input_per_1k / 1000.0, self.default.output_per_1k / 1000.0)
            if self.default is not None
            else (np.nan, np.nan)
        )
        found = np.array(
            [rows.get(model, fallback) if model is not None else fallback for model in model_ids],
            dtype=np.float64,
        ).reshape(-1, 2)
        return found[:, 0], found[:, 1]
