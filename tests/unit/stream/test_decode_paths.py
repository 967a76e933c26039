"""The decoder's fast paths (the common body read by stream.common_event, else orjson and the
model's validator on Python values) against the model's own JSON reader: the same bodies
accepted, as the same events, and the same rejections.

The reference is the decoder as it was before the fast paths: ``validate_json`` first, then
orjson and ``decode_value`` for anything it refused. The generated bodies (event_bodies.py)
lean on what the readers could disagree on.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from pydantic import ValidationError

from schemas import TelemetryEvent
from stream.decode import Decoded, Decoder, _json_error, accepted_event
from tests.unit.stream.event_bodies import bodies, over_the_same_bodies

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
VALID = b'{"app_id": "a", "timestamp": "2026-11-22T11:00:00Z", "trace_id": "t"}'


class JsonFirstDecoder(Decoder):
    """The decoder before the fast path: the model reads the JSON itself."""

    def decode(self, body: bytes, now: datetime | None = None, *, common: bool = True) -> Decoded:
        context = self._context_for(now or datetime.now(UTC))
        validator = TelemetryEvent.__pydantic_validator__
        try:
            return Decoded([accepted_event(0, validator.validate_json(body, context=context))], [])
        except ValidationError:
            pass
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return self._reject_whole(body, _json_error(body, exc))
        return self.decode_value(parsed, context["now"], raw=body)


def outcome(decoded: Decoded) -> tuple[list[Any], list[Any]]:
    accepted = [
        (a.index, a.event.model_dump_json(), a.event.timestamp.tzinfo) for a in decoded.accepted
    ]
    rejected = [(r.index, r.raw, r.issues, r.app_id) for r in decoded.rejected]
    return accepted, rejected


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies())
def test_the_fast_path_decides_as_the_models_json_reader(body: bytes) -> None:
    assert outcome(Decoder().decode(body, NOW)) == outcome(JsonFirstDecoder().decode(body, NOW))


def test_the_generated_bodies_reach_both_outcomes_and_the_edges() -> None:
    """The property above is only as good as its bodies: they must include accepted events,
    rejected ones, and integers beyond 64 bits that were accepted (as floats, in metadata)."""
    seen = {"accepted": 0, "rejected": 0, "big metadata": 0}

    def tally(body: bytes) -> None:
        decoded = JsonFirstDecoder().decode(body, NOW)
        seen["accepted"] += len(decoded.accepted)
        seen["rejected"] += len(decoded.rejected)
        for a in decoded.accepted:
            raw = json.loads(body).get("metadata")
            if isinstance(raw, dict) and any(
                isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**63
                for v in raw.values()
            ):
                seen["big metadata"] += 1

    over_the_same_bodies(tally)
    assert all(count > 0 for count in seen.values()), seen


@pytest.mark.parametrize(
    "body",
    [
        VALID.replace(b'"t"', b'"\\ud800"'),  # a lone surrogate
        VALID.replace(b'"t"', b'"a\x01b"'),  # a control character in a string
        VALID.replace(b'"t"', b'"t", "latency_ms": 1e400'),  # beyond a double
        VALID.replace(b'"t"', b'"t", "latency_ms": NaN'),
        VALID.replace(b'"t"', b'"t", "metadata": {"x": ' + b"[" * 1100 + b"]" * 1100 + b"}"),
        VALID + b"x",
        VALID + b"\n",
        VALID,
    ],
)
def test_bodies_at_the_edges_of_the_json_readers_are_decided_as_before(body: bytes) -> None:
    """orjson refuses each of these but the last two; so does the model's own reader. (A byte
    order mark before the JSON is read past on purpose: test_decode.py.)"""
    assert outcome(Decoder().decode(body, NOW)) == outcome(JsonFirstDecoder().decode(body, NOW))
