"""Snapshot encodings: exact round trips, text kept where bytes would not give it back."""

from __future__ import annotations

import base64
import math
import random

import pytest

from stream.hotpath.packing import (
    b85,
    pack_floats,
    pack_ids,
    pack_varints,
    unpack_floats,
    unpack_ids,
    unpack_varints,
)

from .streams import trace_id


def test_hex_ids_are_packed_as_bytes() -> None:
    ids = [trace_id(i) for i in range(10)]
    packed = pack_ids(ids)
    assert isinstance(packed, str)
    assert len(packed) == 200  # 16 bytes an id, base85
    assert unpack_ids(packed) == ids
    assert unpack_ids(pack_ids([])) == []


@pytest.mark.parametrize(
    "ids",
    [
        ["req-1", trace_id(1)],
        [trace_id(1).upper()],  # unpacking would give lowercase back
        [trace_id(1)[:30]],
    ],
)
def test_other_ids_stay_text(ids: list[str]) -> None:
    assert pack_ids(ids) == ids
    assert unpack_ids(pack_ids(ids)) == ids


def test_packed_ids_must_be_whole() -> None:
    with pytest.raises(ValueError, match="16-byte"):
        unpack_ids("0000000000")  # 8 bytes


def test_floats_round_trip_bit_for_bit() -> None:
    values = [0.1, -0.0, 1767577228.6, 13238.328509666982, math.inf, 5e-324]
    back = unpack_floats(pack_floats(values))
    assert [math.copysign(1, v) for v in back] == [math.copysign(1, v) for v in values]
    assert back == values
    assert math.isnan(unpack_floats(pack_floats([math.nan]))[0])


def test_varints_round_trip() -> None:
    values = [0, 1, 127, 128, 300, 2**40]
    assert unpack_varints(pack_varints(values)) == values


@pytest.mark.parametrize("size", [0, 1, 15, 63, 64, 65, 66, 67, 440, 1001])
def test_b85_is_base64_b85encode(size: int) -> None:
    data = bytes(random.Random(size).getrandbits(8) for _ in range(size))
    assert b85(data) == base64.b85encode(data).decode("ascii")
    assert b85(b"\xff" * size) == base64.b85encode(b"\xff" * size).decode("ascii")
