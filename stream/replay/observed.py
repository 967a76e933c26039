"""The compact form of a document that shadow detection keeps: only what the hot path reads.

A replay keeps its documents in the job file until detection runs over them in event-time
order. Keeping whole documents meant writing, reading and validating every byte again (about
as much CPU per event as the detectors themselves); the hot path reads ten fields. ``pack``
writes those of a document as one small JSON array, ``unpack`` gives them back as an object
the hot path takes like the document (``stream.ports.Observed``). The round trip is exact:
the time keeps its offset and microseconds, scores their floats (tests/unit/stream/replay).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import orjson

from schemas import DerivedSizes, Status, TelemetryDocument
from schemas.trusted import construct_trusted

_STATUS = {status.value: status for status in Status}
_fromisoformat = datetime.fromisoformat


class ObservedEvent(NamedTuple):
    """A stored event as the hot path sees it (``stream.ports.Observed``). A named tuple: made
    once per event read back, at a third of a frozen dataclass's cost."""

    id: str
    app_id: str
    timestamp: datetime
    trace_id: str
    status: Status
    latency_ms: float | None
    # Only whether the event reported tokens matters: their total is in ``derived``.
    tokens: bool | None
    scores: dict[str, float]
    derived: DerivedSizes


# Token counts are each at most 2**64 - 1, so their total can pass 64 bits, which orjson does
# not write (and would read back as a float): such a total is kept as its decimal string.
_UINT64_MAX = 2**64 - 1


def pack(doc: TelemetryDocument) -> bytes:
    derived = doc.derived
    total = derived.tokens_total
    # orjson writes the time as isoformat() does, and the status as its value, at a quarter of
    # the cost of calling them (datetime.isoformat alone took 1.2 µs).
    return orjson.dumps(
        (
            doc.id,
            doc.timestamp,
            doc.trace_id,
            doc.status,
            doc.latency_ms,
            None if doc.tokens is None else True,
            doc.scores,
            derived.input_chars,
            derived.output_chars,
            total if total <= _UINT64_MAX else str(total),
        )
    )


def unpack(app_id: str, packed: bytes) -> ObservedEvent:
    values: list[Any] = orjson.loads(packed)
    (id_, timestamp, trace_id, status, latency, tokens, scores, input_chars, output, total) = values
    derived = construct_trusted(
        DerivedSizes,
        {
            "input_chars": input_chars,
            "output_chars": output,
            "tokens_total": int(total) if type(total) is str else total,
        },
    )
    return ObservedEvent(
        id_,
        app_id,
        _fromisoformat(timestamp),
        trace_id,
        _STATUS[status],
        latency,
        tokens,
        scores,
        derived,
    )
