"""TelemetryEvent: what producers send, one per request of the monitored app."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AliasChoices,
    AliasPath,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION: Literal[1] = 1
APP_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MAX_ID_CHARS = 256
MAX_TEXT_CHARS = 32_768
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_SCORES = 64
# Producers' clocks drift; beyond this an event is from the future and rejected.
DEFAULT_MAX_FUTURE_SKEW = timedelta(minutes=15)

AppId = Annotated[str, StringConstraints(pattern=APP_ID_PATTERN)]


def is_app_id(text: str) -> bool:
    """Whether ``text`` is an app id (for settings that name apps outside a model's field)."""
    return re.fullmatch(APP_ID_PATTERN, text) is not None


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
# Numbers every store and reader takes back: integers that fit 64 bits (signed or unsigned,
# what the JSON writer handles) and finite floats. JSON allows more; NaN, Infinity, 1e400 and
# 2**64 are rejected here rather than lost or refused later.
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
Int64 = Annotated[int, Field(ge=INT64_MIN, le=UINT64_MAX)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Event time bounds: before 1970 no producer clock is right, and the bounds keep every
# derived time (watermark minus lateness, microseconds since the epoch) representable.
MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
MetadataValue = (
    Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_CHARS)]
    | bool
    | Int64
    | FiniteFloat
)


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"


class Tokens(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    input: int = Field(default=0, ge=0, le=UINT64_MAX)
    output: int = Field(default=0, ge=0, le=UINT64_MAX)


class SourcePosition(BaseModel):
    """Where an event was read from: enough to find it again and to order it."""

    model_config = ConfigDict(frozen=True)

    source: str
    partition: str
    sequence: int
    offset: str | None = None
    enqueued_time: datetime


class TelemetryEvent(BaseModel):
    """One request of a monitored app, as its producer reports it.

    Unknown top-level fields are rejected so that a producer's typo is visible in quarantine
    instead of silently losing a field; free-form tags belong in ``metadata``.
    Validation takes an optional context ``{"now": datetime, "max_future_skew": timedelta}``
    for the future-timestamp check (defaults: the wall clock, 15 minutes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)

    schema_version: Literal[1] = SCHEMA_VERSION
    app_id: AppId
    timestamp: AwareDatetime
    # The seed contract lets producers put the trace id in metadata; both shapes dedupe the
    # same way once it is lifted to the top level (resolved inside pydantic-core: no Python).
    trace_id: Identifier = Field(
        validation_alias=AliasChoices("trace_id", AliasPath("metadata", "trace_id"))
    )
    event_id: Identifier | None = None
    span_id: Identifier | None = None
    model_id: Identifier | None = None
    model_version: Identifier | None = None
    input_text: Text | None = None
    output_text: Text | None = None
    latency_ms: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    status: Status = Status.OK
    error_type: Identifier | None = None
    tokens: Tokens | None = None
    scores: dict[MetadataKey, FiniteFloat] = Field(default_factory=dict, max_length=MAX_SCORES)
    user_id: Identifier | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ENTRIES
    )

    @field_validator("timestamp")
    @classmethod
    def _not_in_future(cls, value: datetime, info: ValidationInfo) -> datetime:
        context = info.context or {}
        now: datetime = context.get("now") or datetime.now(UTC)
        skew: timedelta = context.get("max_future_skew", DEFAULT_MAX_FUTURE_SKEW)
        try:
            utc = value.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00 is before year 1 in UTC
            utc = None
        if utc is None or utc < MIN_TIMESTAMP:
            raise PydanticCustomError(
                "timestamp_out_of_range",
                "timestamp {timestamp} is outside {min} .. the clock plus the allowed skew",
                {"timestamp": value.isoformat(), "min": MIN_TIMESTAMP.isoformat()},
            )
        if utc > now + skew:
            raise PydanticCustomError(
                "timestamp_in_future",
                "timestamp {timestamp} is {ahead} ahead of the clock (allowed skew {skew})",
                {"timestamp": value.isoformat(), "ahead": str(utc - now), "skew": str(skew)},
            )
        return utc
