"""Deliberately broken inputs: each defect turns a valid event into one kind of bad body that the
decoder must quarantine (with its reason) rather than store or drop."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

import orjson

# The deliberately broken inputs, in the order the defect draw indexes them.
DEFECTS: Final[tuple[str, ...]] = (
    "malformed_json",
    "wrong_type",
    "missing_trace_id",
    "naive_timestamp",
    "future_timestamp",
    "oversized_output_text",
    "too_many_metadata",
    "invalid_utf8",
    "not_an_object",
    "deeply_nested_metadata",
)

# Sizes just past the contract's limits (schemas/telemetry.py) for the broken inputs.
_OVERSIZED_TEXT_CHARS: Final = 40_000
_TOO_MANY_METADATA: Final = 40
_NESTING_DEPTH: Final = 40
_FUTURE_OFFSET: Final = timedelta(days=1)


def broken_body(
    defect: str, doc: dict[str, Any], variant: int, event_time: datetime, answer: str
) -> bytes:
    """Turn a valid event into the named kind of broken input."""
    if defect == "malformed_json":
        body = orjson.dumps(doc)
        # A truncated object is never valid JSON; where it is cut varies.
        return body[: 1 + variant % (len(body) - 1)]
    if defect == "wrong_type":
        choice = variant % 3
        if choice == 0:
            doc["latency_ms"] = "fast"
        elif choice == 1:
            doc["tokens"] = {"input": "many", "output": 12}
        else:
            doc["span_id"] = 12345
        return orjson.dumps(doc)
    if defect == "missing_trace_id":
        doc.pop("trace_id", None)
        doc["metadata"].pop("trace_id", None)
        return orjson.dumps(doc)
    if defect == "naive_timestamp":
        doc["timestamp"] = event_time.replace(tzinfo=None)
        return orjson.dumps(doc)
    if defect == "future_timestamp":
        doc["timestamp"] = event_time + _FUTURE_OFFSET
        return orjson.dumps(doc)
    if defect == "oversized_output_text":
        doc["output_text"] = (answer + " ") * (_OVERSIZED_TEXT_CHARS // (len(answer) + 1) + 1)
        return orjson.dumps(doc)
    if defect == "too_many_metadata":
        doc["metadata"].update({f"tag_{k:02d}": f"value-{k}" for k in range(_TOO_MANY_METADATA)})
        return orjson.dumps(doc)
    if defect == "invalid_utf8":
        doc["input_text"] = "\x00MARK\x00"
        # orjson only writes valid UTF-8, so splice raw bytes in after encoding.
        return orjson.dumps(doc).replace(b"\\u0000MARK\\u0000", b"caf\xc3 \xff\xfe na\xefve")
    if defect == "not_an_object":
        return orjson.dumps((42, "hello", None, True, 3.5)[variant % 5])
    if defect == "deeply_nested_metadata":
        nested: Any = "bottom"
        for _ in range(_NESTING_DEPTH):
            nested = {"context": nested}
        doc["metadata"]["context"] = nested
        return orjson.dumps(doc)
    raise ValueError(f"unknown defect {defect!r}")
