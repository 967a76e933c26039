"""TelemetryEvent: what producers send, one per request of the monitored app."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    AliasPath,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
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


def _kind(value: object) -> str:
    """A JSON value's kind, as an error message names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float) or (isinstance(value, int) and abs(value) < 10**30):
        return f"a number ({value!r})"
    if isinstance(value, int):
        return "a number"  # no digits: an integer of thousands of them would fill the message
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _json_number(value: Any) -> Any:
    """A float field's value as JSON has it: a number. Lax validation would read a boolean as
    0 or 1 and a string such as "1_000" as a number; both are refused with the codes pydantic
    gives a string it cannot read and a value of the wrong type."""
    if type(value) is int or type(value) is float:
        return value
    if isinstance(value, str):
        raise PydanticCustomError("float_parsing", "Input should be a JSON number, got a string")
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "Input should be a JSON number, got a boolean")
    return value  # the strict float schema refuses the rest (null, arrays, objects)


def _json_integer(value: Any) -> Any:
    """An integer field's value as JSON has it: an integer written without a fraction or an
    exponent, as the common event reader (msgspec) takes it. 100.0 and 1e2 are refused, as are
    booleans and strings. An integer beyond 64 bits is ``int_parsing_size`` whichever way it
    arrives: the decoder's JSON reader (orjson) gives such an integer as a float."""
    if type(value) is int:
        if not INT64_MIN <= value <= UINT64_MAX:
            raise _beyond_64_bits()
        return value
    if type(value) is float:
        if value.is_integer() and not INT64_MIN <= value <= UINT64_MAX:
            raise _beyond_64_bits()
        raise PydanticCustomError(
            "int_from_float",
            "Input should be a JSON integer, without a fraction or an exponent, got {number}",
            {"number": repr(value)},
        )
    if isinstance(value, str):
        raise PydanticCustomError("int_parsing", "Input should be a JSON integer, got a string")
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a JSON integer, got a boolean")
    return value  # the strict int schema refuses the rest (null, arrays, objects)


def _beyond_64_bits() -> PydanticCustomError:
    return PydanticCustomError(
        "int_parsing_size",
        "Input should be an integer within 64 bits, at most {max}",
        {"max": UINT64_MAX},
    )


# A JSON number (an integer or not) for a float field, finite: not a boolean, not a string.
JsonFloat = Annotated[float, Strict(), Field(allow_inf_nan=False), BeforeValidator(_json_number)]
# Bounded in the same Annotated (not by a Field on the optional field): the JSON Schema then
# says "minimum", where a Field outside the validator gave pydantic's own "ge".
NonNegativeJsonFloat = Annotated[
    float, Strict(), Field(ge=0, allow_inf_nan=False), BeforeValidator(_json_number)
]
# A JSON integer for a count: not 100.0, not a boolean, not a string.
Count = Annotated[int, Strict(), Field(ge=0, le=UINT64_MAX), BeforeValidator(_json_integer)]
# Timestamps in RFC 3339's form (section 5.6) with its time zone: Z or an offset with a colon,
# seconds always, any fraction digits; T, t or a space (as its note allows) before the time.
# The model's own reader (speedate) takes more: unix times and their strings, "+0200",
# "11:00Z", "11:00:00,5Z".
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
).fullmatch
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
    """Token counts: JSON integers from 0 to 2**64 - 1, written without a fraction or an
    exponent (12, not 12.0 or 1.2e1; ``int_from_float``). Booleans (``int_type``) and strings,
    digits or not (``int_parsing``), are refused: counts are read as JSON writes numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: Count = 0
    output: Count = 0


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

    Values are read as their JSON types, never converted from another (pydantic's lax mode
    would, silently), with the same decision whether the event is validated from JSON or
    from the Python values a JSON reader made of it:

    - ``timestamp``: an RFC 3339 string with a time zone (``_RFC3339``; fractions beyond
      microseconds are cut). A number, unix time or not, is ``datetime_type``: its unit is a
      guess (lax mode read 253402300799, year 9999 in seconds, as milliseconds: 1978); a
      string in another form the date reader knows (digits, "+0200") is
      ``timestamp_not_rfc3339``. From Python, an aware ``datetime`` is taken too.
    - ``latency_ms`` and ``scores``' values: finite JSON numbers, integers or not. A boolean is
      ``float_type``, a string (even "5") ``float_parsing``.
    - ``tokens``: see Tokens (JSON integers only).
    - ``schema_version``: the JSON integer 1 (``literal_error`` for 1.0, true or "1").
    - ``metadata`` values keep their JSON type: a string, a boolean, an integer or a float.
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
    latency_ms: NonNegativeJsonFloat | None = None
    status: Status = Status.OK
    error_type: Identifier | None = None
    tokens: Tokens | None = None
    scores: dict[MetadataKey, JsonFloat] = Field(default_factory=dict, max_length=MAX_SCORES)
    user_id: Identifier | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_ENTRIES
    )

    @field_validator("schema_version", mode="before")
    @classmethod
    def _schema_version_is_an_integer(cls, value: Any) -> Any:
        # Lax mode takes true and 1.0 for the literal 1.
        if type(value) is not int:
            raise PydanticCustomError(
                "literal_error",
                "Input should be the JSON integer 1, got {kind}",
                {"kind": _kind(value)},
            )
        return value

    # Defined before _not_in_future, so that it runs first: the form, then the range.
    @field_validator("timestamp", mode="wrap")
    @classmethod
    def _rfc3339_string(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> datetime:
        if isinstance(value, datetime):
            return handler(value)  # type: ignore[no-any-return]
        if type(value) is not str:
            raise PydanticCustomError(
                "datetime_type",
                "timestamp should be an RFC 3339 string with a time zone, such as "
                "2026-11-22T10:15:00Z, got {kind}",
                {"kind": _kind(value)},
            )
        parsed: datetime = handler(value)  # the reader's own reason first: no zone, no date
        if _RFC3339(value) is None:
            raise PydanticCustomError(
                "timestamp_not_rfc3339",
                "timestamp '{timestamp}' is not in RFC 3339 form, such as 2026-11-22T10:15:00Z "
                "or 2026-11-22T12:15:00.5+02:00",
                {"timestamp": value[:64]},
            )
        return parsed

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
