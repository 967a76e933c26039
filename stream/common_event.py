"""The common event body read in one pass of C (msgspec) instead of orjson and the model's
validator: a stricter reading of TelemetryEvent that gives the event the model would give, or
None, and then the model decides (its errors are the ones a producer sees).

Stricter where the two readers differ, so that what this accepts the model accepts with equal
values: timestamps only in RFC 3339's form with at most microseconds (msgspec rounds longer
fractions, the model cuts them), integers within 64 signed bits, no ``null`` where the model
takes one value of two names (trace_id). tests/unit/stream/test_common_event.py compares the
two readers on generated bodies; bench/NOTES.md has what it saves (~5 µs of ~13 per event).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from schemas.telemetry import (
    APP_ID_PATTERN,
    INT64_MIN,
    MAX_ID_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    MAX_SCORES,
    MAX_TEXT_CHARS,
    MIN_TIMESTAMP,
    Status,
    TelemetryEvent,
    Tokens,
)
from schemas.trusted import construct_trusted

# msgspec checks patterns with Python's ``re``, whose ``$`` also matches before a final
# newline; the model's (Rust) ``$`` does not: ``\Z`` is that.
_APP_ID = APP_ID_PATTERN.removesuffix("$") + r"\Z"
# [0-9], not \d: Python's \d takes every script's digits. An offset's minutes to 59:
# ``datetime.fromisoformat`` reads "+00:60" as an hour, the model refuses it.
_TIMESTAMP = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-5][0-9])\Z"
)
# msgspec bounds integers to 64 signed bits at most; the model's upper bound (2**64 - 1) is
# left to the model. The largest double bounds floats: JSON numbers beyond it are refused.
_INT64_MAX = 2**63 - 1
_FLOAT_MAX = 1.7976931348623157e308

Identifier = Annotated[str, Meta(min_length=1, max_length=MAX_ID_CHARS)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_CHARS)]
MetadataKey = Annotated[str, Meta(min_length=1, max_length=MAX_METADATA_KEY_CHARS)]
FiniteFloat = Annotated[float, Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]
Count = Annotated[int, Meta(ge=0, le=_INT64_MAX)]
MetadataValue = (
    Annotated[str, Meta(max_length=MAX_METADATA_VALUE_CHARS)]
    | bool
    | Annotated[int, Meta(ge=INT64_MIN, le=_INT64_MAX)]
    | FiniteFloat
)


class _Tokens(Struct, forbid_unknown_fields=True):
    input: Count = 0
    output: Count = 0


class _Event(Struct, forbid_unknown_fields=True, kw_only=True):
    """TelemetryEvent's fields in its declared order (the event's ``__dict__`` keeps it)."""

    schema_version: Literal[1] = 1
    app_id: Annotated[str, Meta(pattern=_APP_ID)]
    timestamp: Annotated[str, Meta(pattern=_TIMESTAMP)]
    # Absent: the model looks in metadata. An explicit null is the model's to refuse.
    trace_id: Identifier | UnsetType = UNSET
    event_id: Identifier | None = None
    span_id: Identifier | None = None
    model_id: Identifier | None = None
    model_version: Identifier | None = None
    input_text: Text | None = None
    output_text: Text | None = None
    latency_ms: Annotated[float, Meta(ge=0, le=_FLOAT_MAX)] | None = None
    status: Status = Status.OK
    error_type: Identifier | None = None
    tokens: _Tokens | None = None
    scores: Annotated[dict[MetadataKey, FiniteFloat], Meta(max_length=MAX_SCORES)] = {}
    user_id: Identifier | None = None
    metadata: Annotated[
        dict[MetadataKey, MetadataValue], Meta(max_length=MAX_METADATA_ENTRIES)
    ] = {}


class _Envelope(Struct, forbid_unknown_fields=True):
    events: list[_Event]


_decode = msgspec.json.Decoder(_Event).decode
_decode_array = msgspec.json.Decoder(list[_Event]).decode
_decode_envelope = msgspec.json.Decoder(_Envelope).decode
_as_dict = msgspec.structs.asdict
_from_iso = datetime.fromisoformat
_WHITESPACE = b" \t\r\n"


def common_event(body: bytes, latest: datetime) -> TelemetryEvent | None:
    """The event of ``body`` if it is one event object of the common shape, valid, with a
    timestamp from 1970 to ``latest`` (the validation context's now plus the allowed skew);
    else None, for the model to decide."""
    try:
        return _event(_decode(body), latest)
    except msgspec.MsgspecError:
        return None


def common_events(body: bytes, latest: datetime, most: int) -> list[TelemetryEvent] | None:
    """The events of ``body`` if it is one event, an array of 1 to ``most`` events or
    ``{"events": [...]}`` of them, each as ``common_event`` accepts it; else None, for the
    model to decide (an event it is unsure of leaves it the whole body: the model judges each
    item alone)."""
    try:
        if body.lstrip(_WHITESPACE).startswith(b"["):
            items = _decode_array(body)
        else:
            try:
                items = _decode_envelope(body).events
            except msgspec.ValidationError:
                items = [_decode(body)]
    except msgspec.MsgspecError:
        return None
    if not 0 < len(items) <= most:
        return None
    events = []
    for item in items:
        event = _event(item, latest)
        if event is None:
            return None
        events.append(event)
    return events


def _event(item: _Event, latest: datetime) -> TelemetryEvent | None:
    values = _as_dict(item)
    try:
        # The form _TIMESTAMP admits reads the same here as in the model.
        timestamp = _from_iso(values["timestamp"]).astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if not MIN_TIMESTAMP <= timestamp <= latest:
        return None
    values["timestamp"] = timestamp
    if values["trace_id"] is UNSET:
        trace_id = values["metadata"].get("trace_id")
        if type(trace_id) is not str or not 0 < len(trace_id) <= MAX_ID_CHARS:
            return None
        values["trace_id"] = trace_id
    tokens = values["tokens"]
    if tokens is not None:
        values["tokens"] = construct_trusted(
            Tokens, {"input": tokens.input, "output": tokens.output}
        )
    return construct_trusted(TelemetryEvent, values)
