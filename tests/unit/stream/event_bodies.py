"""Generated event bodies for the decoder's differential tests (test_decode_paths,
test_common_event): they lean on what two JSON readers or validators could disagree on —
integers beyond 64 bits (orjson reads them as floats), integral floats, -0.0, long decimal
expansions, escapes and non-ASCII text, timestamps in every form a date reader takes, numbers
where strings belong and the other way round: digits in strings, booleans and integral floats
where numbers or integers belong."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BIG = [2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**30)]
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(BIG),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 1e2, 1e300, 5e-324, 0.1, 2.0**63, 2.0**64, -(2.0**63)]),
)
texts = st.text(max_size=12) | st.sampled_from(["", " ", "é", "\u2028", "💥", "a\\b", '"q"'])
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
# What a lax reader takes for a number: strings of digits in Python's and JSON's forms.
number_texts = st.sampled_from(["100", "1_000", "1e2", "0.5", " 5", "-0", "NaN", "inf", "0x10"])
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=4)
VALID_TIMES = [
    "2026-11-22T11:00:00Z",
    "2026-11-22T11:00:00.123456Z",
    "2026-11-22T11:00:00.1234567Z",
    "2026-11-22T13:00:00+02:00",
    "2026-11-22T11:00:00+00:00",
    "2026-11-22 11:00:00Z",
    "2026-11-22T12:14:59Z",
]


def _two_digits(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map("{:02d}".format)


_offsets = st.builds(
    "{}{}{}{}".format,
    st.sampled_from("+-"),
    _two_digits(0, 25),
    st.sampled_from([":", ""]),
    _two_digits(0, 99),
)
# Timestamps built from their parts, each part reaching just past its range, where the model
# and another date reader can disagree: offset minutes past 59 (datetime.fromisoformat reads
# +00:60 as an hour), hour 24, a leap second, February 29th, day 0, lower-case separators,
# fractions beyond microseconds; and forms outside RFC 3339 that a date reader takes: no
# seconds, a comma before the fraction, an offset without its colon.
formed_timestamps = st.builds(
    "{}-{}-{}{}{}:{}{}{}{}".format,
    st.sampled_from(["1970", "2024", "2026", "0001", "9999"]),
    _two_digits(0, 13),
    _two_digits(0, 32),
    st.sampled_from(["T", "T", "t", " "]),
    _two_digits(0, 25),
    _two_digits(0, 61),
    _two_digits(0, 61).map(":{}".format) | st.sampled_from([":00", ""]),
    st.sampled_from(["", ".0", ".5", ".123456", ".1234567", ".000000001", ",5"]),
    st.sampled_from(["Z", "z", "+00:00", "-00:00"]) | _offsets,
)
valid_timestamps = st.sampled_from(VALID_TIMES) | formed_timestamps
# Naive, a date alone, past the allowed skew, before 1970 or before year 1 in UTC, far ahead;
# unix times (in seconds or milliseconds: a lax reader guesses which), as numbers or strings.
timestamps = st.one_of(
    st.sampled_from(
        [
            "2026-11-22T11:00:00",
            "2026-11-22",
            "2026-11-22T12:16:00Z",
            "1969-12-31T23:59:59Z",
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59Z",
        ]
    ),
    formed_timestamps,
    st.integers(min_value=-(10**12), max_value=10**13),
    st.sampled_from([1_765_101_600, 253_402_300_799, 1_765_101_600_000]),
    st.floats(0, 1.79e9),
    st.integers(0, 1_790_000_000).map(str),
    st.sampled_from(["1765101600", "1765101600.5", "253402300799"]),
    scalars,
)
ids = st.text(min_size=1, max_size=12)
keys = st.text(min_size=1, max_size=8)
# Per field: (a valid value, a hostile one). Valid values still reach the edges: integers of
# any size in metadata and scores (beyond 64 bits they are floats). Hostile ones include what
# a lax reader would convert: booleans, digits in strings, integral floats for integers.
FIELDS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "schema_version": (st.just(1), st.sampled_from(["1", 2, True, 1.0]) | scalars),
    "app_id": (st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True), scalars),
    "timestamp": (valid_timestamps, timestamps),
    "trace_id": (ids | st.just("x" * 256), st.just("x" * 257) | scalars),
    "event_id": (ids, scalars),
    "span_id": (ids, scalars),
    "model_id": (ids, scalars),
    "input_text": (texts, scalars),
    "latency_ms": (
        numbers.filter(lambda x: x >= 0) | st.sampled_from([0, 2**64]),
        number_texts | scalars,
    ),
    "status": (st.sampled_from(["ok", "error"]), st.sampled_from(["OK", "warn"]) | scalars),
    "error_type": (ids, scalars),
    "tokens": (
        st.none()
        | st.dictionaries(
            st.sampled_from(["input", "output"]),
            st.integers(0, 2**64 - 1) | st.sampled_from([2**64 - 1, 0]),
        ),
        st.dictionaries(
            st.sampled_from(["input", "output", "cached"]),
            st.sampled_from([3.0, 1e2, 2.0**64, "3", True, False])
            | numbers
            | number_texts
            | scalars,
        ),
    ),
    "scores": (
        st.dictionaries(keys, numbers, max_size=3),
        st.dictionaries(keys, st.booleans() | number_texts, min_size=1, max_size=2) | scalars,
    ),
    "user_id": (ids, scalars),
    "metadata": (
        st.dictionaries(
            keys | st.just("trace_id"),
            scalars.filter(lambda v: v is not None) | st.sampled_from(BIG),
        ),
        st.dictionaries(keys, values, max_size=4) | scalars,
    ),
    "unknown": (scalars, scalars),
}
REQUIRED = {"app_id", "timestamp", "trace_id"}


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """An event object: each field present or not (the required ones mostly present), and
    valid but for one field in ten."""
    event: dict[str, Any] = {}
    for name, (valid, hostile) in FIELDS.items():
        # sampled_from, not integers: the first choice is where hypothesis shrinks and leans.
        if name in REQUIRED:
            wanted = draw(st.sampled_from([True] * 19 + [False]))
        elif name == "unknown":
            wanted = draw(st.sampled_from([False] * 19 + [True]))
        else:
            wanted = draw(st.booleans())
        if wanted:
            event[name] = draw(draw(st.sampled_from([valid] * 9 + [hostile])))
    # Python's JSON writer keeps integers of any size and writes floats exactly (repr).
    return json.dumps(event, ensure_ascii=draw(st.booleans())).encode()


def over_the_same_bodies(check: Callable[[bytes], None], count: int = 400) -> None:
    """``check`` on the same ``count`` generated bodies on every run: for tests of what the
    generator reaches, not of a reader."""

    @settings(
        max_examples=count,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(body=bodies())
    def run(body: bytes) -> None:
        check(body)

    run()
