"""Parameter models of the text metrics; ``check`` turns pydantic's errors into a ValueError
that starts with the parameter's name, as ``Metric.validate_params`` promises."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from coldpath.policies.text.inputs import DEFAULT_CONTEXT_KEY, DEFAULT_REFERENCE_KEY
from schemas.bounds import MAX_COUNT

P = TypeVar("P", bound=BaseModel)

DEFAULT_SAMPLE_SIZE = 20
DEFAULT_MAX_TOKENS = 200_000
DEFAULT_CONCURRENCY = 4
DEFAULT_CALL_TIMEOUT_S = 60.0


class OverlapParams(BaseModel):
    """Code-based evaluators: where the reference answer is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference_key: str = Field(default=DEFAULT_REFERENCE_KEY, min_length=1)


class RougeParams(OverlapParams):
    rouge_type: Literal["rouge1", "rouge2", "rouge3", "rouge4", "rouge5", "rougeL"] = "rougeL"


class JudgeParams(BaseModel):
    """AI-assisted evaluators: how many documents per window, and what they may cost.

    ``max_calls`` (default: ``sample_size``) and ``max_tokens`` cap one window's judge usage;
    ``seed`` changes which documents the sample draws (re-runs with the same seed draw the
    same ones). ``call_timeout_s`` bounds one evaluator call including the SDK's own retries.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_size: int = Field(default=DEFAULT_SAMPLE_SIZE, ge=1, le=10_000)
    # Any integer: only its text is hashed (sampling.priority).
    seed: int = 0
    max_calls: int | None = Field(default=None, ge=1, le=MAX_COUNT)
    max_tokens: int = Field(default=DEFAULT_MAX_TOKENS, ge=1, le=MAX_COUNT)
    concurrency: int = Field(default=DEFAULT_CONCURRENCY, ge=1, le=64)
    call_timeout_s: float = Field(default=DEFAULT_CALL_TIMEOUT_S, gt=0, le=3600)
    context_key: str = Field(default=DEFAULT_CONTEXT_KEY, min_length=1)

    @property
    def call_limit(self) -> int:
        return self.sample_size if self.max_calls is None else self.max_calls


def check(model: type[P], params: Mapping[str, Any]) -> P:
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "params"
        raise ValueError(f"{where}: {first['msg']}") from exc
