"""Bad input: every kind gets a specific reason; valid neighbours survive; nothing raises."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from unittest import mock

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream import decode
from stream.decode import DecodeLimits, Decoder, ndjson_lines

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
GOOD = {"app_id": "a", "timestamp": "2026-11-22T11:00:00Z", "trace_id": "t"}


def codes(body: bytes, decoder: Decoder | None = None) -> list[list[str]]:
    decoded = (decoder or Decoder()).decode(body, NOW)
    return [[issue.code for issue in rejected.issues] for rejected in decoded.rejected]


def good(**changes: object) -> dict[str, object]:
    return {**GOOD, **changes}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"app_id": "a", ', "malformed_json"),
        (b"", "malformed_json"),
        (b'{"app_id": "\xff\xfe"}', "invalid_utf8"),
        (b"42", "not_an_object"),
        (b'"just a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"events": 5}', "not_an_array"),
        (b"[" * 2000 + b"]" * 2000, "too_deeply_nested"),
        (orjson.dumps(good(trace_id=None)), "string_type"),
        (orjson.dumps({k: v for k, v in GOOD.items() if k != "trace_id"}), "missing"),
        (orjson.dumps(good(timestamp="2026-11-22T11:00:00")), "timezone_aware"),
        (orjson.dumps(good(timestamp="2099-01-01T00:00:00Z")), "timestamp_in_future"),
        (orjson.dumps(good(latency_ms="fast")), "float_parsing"),
        (orjson.dumps(good(output_text="x" * 40_000)), "string_too_long"),
        (orjson.dumps(good(metadata={f"k{i}": 1 for i in range(40)})), "too_long"),
        (orjson.dumps(good(metadata={"deep": {"a": {"b": 1}}})), "metadata_not_scalar"),
    ],
)
def test_each_bad_input_gets_a_specific_reason(body: bytes, expected: str) -> None:
    (issues,) = codes(body)
    assert expected in issues


def test_issue_names_location_and_message() -> None:
    decoded = Decoder().decode(orjson.dumps([GOOD, good(latency_ms=-3)]), NOW)
    (rejected,) = decoded.rejected
    (issue,) = rejected.issues
    assert (rejected.index, issue.location, issue.code) == (
        1,
        "$[1].latency_ms",
        "greater_than_equal",
    )
    assert "greater than or equal to 0" in issue.message
    assert rejected.app_id == "a"


def test_valid_neighbours_of_bad_events_are_accepted() -> None:
    body = orjson.dumps({"events": [GOOD, 7, good(trace_id="t2"), good(timestamp="bad")]})
    decoded = Decoder().decode(body, NOW)
    assert [accepted.index for accepted in decoded.accepted] == [0, 2]
    assert [rejected.index for rejected in decoded.rejected] == [1, 3]
    assert decoded.rejected[0].issues[0].location == "$.events[1]"


def test_all_transport_shapes_are_accepted() -> None:
    decoder = Decoder()
    assert len(decoder.decode(orjson.dumps(GOOD), NOW).accepted) == 1
    assert len(decoder.decode(orjson.dumps([GOOD, GOOD]), NOW).accepted) == 2
    assert len(decoder.decode(orjson.dumps({"events": [GOOD] * 3}), NOW).accepted) == 3


@pytest.mark.parametrize(
    "value", [GOOD, [GOOD, GOOD], {"events": [GOOD]}], ids=["object", "array", "envelope"]
)
def test_a_byte_order_mark_before_the_json_is_read_past(value: object) -> None:
    # Some Windows tools write one; NDJSON's first line was already read past it.
    plain = Decoder().decode(orjson.dumps(value), NOW)
    marked = Decoder().decode(decode.BOM + orjson.dumps(value), NOW)
    assert not marked.rejected
    assert [a.event for a in marked.accepted] == [a.event for a in plain.accepted]
    # Only at the start: one inside is malformed JSON.
    assert codes(orjson.dumps(value)[:1] + decode.BOM + orjson.dumps(value)[1:]) == [
        ["malformed_json"]
    ]


def test_huge_arrays_are_rejected_whole() -> None:
    decoder = Decoder(DecodeLimits(max_events_per_body=10))
    assert codes(orjson.dumps([GOOD] * 11), decoder) == [["too_many_events"]]


def test_oversized_bodies_are_rejected_before_parsing() -> None:
    decoder = Decoder(DecodeLimits(max_body_bytes=100))
    assert codes(b'{"x": "' + b"y" * 200 + b'"}', decoder) == [["body_too_large"]]


def test_several_problems_are_all_reported() -> None:
    (issues,) = codes(orjson.dumps({"app_id": "bad app", "timestamp": "x", "latency_ms": -1}))
    assert {"string_pattern_mismatch", "datetime_from_date_parsing", "missing"} <= set(issues)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        "app_id": st.text(max_size=10) | json_values,
        "timestamp": st.sampled_from(["2026-11-22T11:00:00Z", "2026-11-22T11:00:00", "x"])
        | json_values,
        "trace_id": st.text(max_size=5) | json_values,
        "latency_ms": st.floats() | json_values,
        "tokens": st.fixed_dictionaries(
            {}, optional={"input": st.integers(-(2**63), 2**63 - 1), "output": json_values}
        ),
        "scores": st.dictionaries(st.text(max_size=5), st.floats() | json_values, max_size=3),
        "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    },
)


def _accounts_for_everything(body: bytes) -> None:
    decoded = Decoder().decode(body, NOW)
    assert decoded.accepted or decoded.rejected
    for rejected in decoded.rejected:
        assert rejected.issues, "every rejection carries at least one reason"
        assert all(issue.code and issue.message for issue in rejected.issues)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(body: bytes) -> None:
    _accounts_for_everything(body)


@settings(max_examples=300, deadline=None)
@given(json_values | event_like | st.lists(event_like, max_size=4))
def test_arbitrary_json_never_raises(value: object) -> None:
    _accounts_for_everything(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))


# Pieces of NDJSON text where line splitting can go wrong: every kind of ending, blank and
# whitespace-only lines, a byte order mark (dropped only at the very start).
_NDJSON_PIECES = st.sampled_from(
    [b"{}", b'{"a": 1}', b"x", b" ", b"\t", b"\n", b"\r", b"\r\n", b"\xef\xbb\xbf"]
)


def _lines_one_by_one(data: bytes) -> list[bytes]:
    """The plain reading of the format: split at every ending, strip, skip what is blank."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    return [
        line.strip()
        for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        if line.strip()
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(_NDJSON_PIECES, max_size=40), st.sampled_from([1, 2, 3, 7, 1 << 20]))
def test_ndjson_lines_split_and_place_every_line(pieces: list[bytes], block: int) -> None:
    data = b"".join(pieces)
    with mock.patch.object(decode, "_BLOCK", block):
        found = list(ndjson_lines(io.BytesIO(data)))
        assert [line for _, line in found] == _lines_one_by_one(data)
        for index, (offset, line) in enumerate(found):
            # Its offset is where the line starts: read from there, the rest comes back.
            stream = io.BytesIO(data)
            stream.seek(offset)
            assert list(ndjson_lines(stream, offset)) == found[index:]
            rest = data[offset:].removeprefix(b"\xef\xbb\xbf") if offset == 0 else data[offset:]
            assert rest.lstrip().startswith(line)
        # Bounded: the lines of the first bytes only.
        for end in range(len(data) + 1):
            bounded = [line for _, line in ndjson_lines(io.BytesIO(data), 0, end)]
            assert bounded == _lines_one_by_one(data[:end])


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-le"])
def test_an_ndjson_body_in_utf16_or_utf32_is_rejected_whole(encoding: str) -> None:
    lines = [orjson.dumps(GOOD).decode(), orjson.dumps({**GOOD, "trace_id": "t-2"}).decode()]
    body = "\n".join(lines).encode(encoding)
    decoded = Decoder().decode_ndjson(body, NOW)
    assert decoded.accepted == []
    assert [(r.index, r.raw, [i.code for i in r.issues]) for r in decoded.rejected] == [
        (0, body, ["invalid_utf8"])
    ]
    assert "not UTF-8" in decoded.rejected[0].issues[0].message
