"""Enrichment: deterministic ids, partition keys, keyed user hashes, quarantine records."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import AppDirectory, TelemetryEvent
from stream.decode import Decoder
from stream.enrich import (
    APP_FIELDS_CACHE_SIZE,
    USER_HASH_CACHE_SIZE,
    Enricher,
    canonical_json,
    document_id,
    partition_key,
    sent_form,
)
from stream.ports import ReceivedEvent

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
APPS = AppDirectory(overrides={"checkout-bot": {"metadata": {"owner": "payments", "tier": "gold"}}})


def enrich(body: bytes, key: bytes = b"k1", sequence: int = 7) -> list:
    decoded = Decoder().decode(body, NOW)
    position = ReceivedEvent(
        body, "2", sequence, datetime(2026, 11, 22, 11, 59, 59, tzinfo=UTC), "7"
    )
    enricher = Enricher(APPS, key, "local")
    return [enricher.document(a.event, position, a.index, NOW, False) for a in decoded.accepted]


BODY = orjson.dumps(
    {
        "app_id": "checkout-bot",
        "timestamp": "2026-11-21T23:30:00-01:00",
        "trace_id": "t-1",
        "user_id": "alice@example.com",
        "input_text": "hello",
        "output_text": "hi there",
        "tokens": {"input": 3, "output": 5},
    }
)


def test_the_id_is_the_hash_of_the_canonical_event_and_its_user() -> None:
    event = TelemetryEvent.model_validate_json(BODY, context={"now": NOW})
    assert event.user_id and not event.event_id
    content = event.model_dump_json(exclude={"user_id"}).encode()
    expected = hashlib.blake2b(
        content + b"\x1f" + event.user_id.encode() + b"\x1f", digest_size=16
    ).hexdigest()
    assert enrich(BODY)[0].id == expected
    other_user = BODY.replace(event.user_id.encode(), b"someone-else")
    assert enrich(other_user)[0].id != expected


def test_same_event_in_other_bytes_gives_the_same_id() -> None:
    reformatted = orjson.dumps(
        orjson.loads(BODY), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS
    )
    utc_spelling = BODY.replace(b"2026-11-21T23:30:00-01:00", b"2026-11-22T00:30:00Z")
    as_array = b"[" + BODY + b"]"
    ids = {enrich(body)[0].id for body in (BODY, reformatted, utc_spelling, as_array)}
    assert len(ids) == 1


def test_id_does_not_depend_on_position_or_key() -> None:
    assert enrich(BODY, key=b"other", sequence=99)[0].id == enrich(BODY)[0].id


def test_different_content_gives_a_different_id() -> None:
    other = BODY.replace(b"t-1", b"t-2")
    assert enrich(other)[0].id != enrich(BODY)[0].id


def test_event_id_is_used_when_present() -> None:
    body = BODY.replace(b'"trace_id"', b'"event_id":"evt-9","trace_id"')
    assert enrich(body)[0].id == "evt-9"


def test_partition_key_is_app_and_utc_day_of_event_time() -> None:
    # 23:30 at UTC-1 is 00:30 UTC on the next day.
    assert enrich(BODY)[0].pk == "checkout-bot:2026-11-22"


def test_user_id_is_replaced_by_a_keyed_hash() -> None:
    doc = enrich(BODY)[0]
    assert "alice" not in doc.model_dump_json()
    assert doc.user_hash == enrich(BODY)[0].user_hash
    assert doc.user_hash != enrich(BODY, key=b"k2")[0].user_hash


def test_ingest_position_lag_metadata_and_sizes() -> None:
    doc = enrich(BODY)[0]
    assert (doc.ingest.source, doc.ingest.partition, doc.ingest.sequence) == ("local", "2", 7)
    assert doc.ingest.lag_ms == 1000.0
    assert doc.app == {"project_code": "unassigned", "owner": "payments", "tier": "gold"}
    assert (doc.derived.input_chars, doc.derived.output_chars, doc.derived.tokens_total) == (
        5,
        8,
        8,
    )


def test_unknown_app_gets_default_metadata() -> None:
    doc = enrich(BODY.replace(b"checkout-bot", b"other-app"))[0]
    assert doc.app["owner"] == "unknown"


def test_quarantine_ids_follow_the_source_position() -> None:
    enricher = Enricher(APPS, b"k", "local")
    (rejected,) = Decoder().decode(b"{broken", NOW).rejected
    at = ReceivedEvent(b"{broken", "1", 5, NOW)
    first = enricher.quarantine(rejected, at, NOW)
    again = enricher.quarantine(rejected, at, datetime(2027, 1, 1, tzinfo=UTC))
    elsewhere = enricher.quarantine(rejected, ReceivedEvent(b"{broken", "1", 6, NOW), NOW)
    assert first.id == again.id != elsewhere.id
    assert first.pk == "quarantine:2026-11-22"
    assert first.raw == "{broken"
    assert first.issues[0].code == "malformed_json"


def test_quarantine_keeps_undecodable_bytes_as_base64() -> None:
    enricher = Enricher(APPS, b"k", "local")
    (rejected,) = Decoder().decode(b"\xff\xfe\x00", NOW).rejected
    record = enricher.quarantine(rejected, None, NOW)
    assert (record.raw_encoding, record.raw, record.source) == ("base64", "//4A", "direct")


def test_canonical_event_roundtrip_is_stable() -> None:
    event = TelemetryEvent.model_validate_json(BODY, context={"now": NOW})
    assert (
        TelemetryEvent.model_validate_json(event.model_dump_json(), context={"now": NOW}) == event
    )


def _pydantic_canonical(event: TelemetryEvent) -> bytes:
    return event.model_dump_json(exclude={"user_id"}).encode()


def test_canonical_json_is_byte_identical_to_pydantic_serialisation() -> None:
    bodies = [
        BODY,
        b'{"app_id":"a","timestamp":"2026-11-22T10:00:00.000001+02:00","trace_id":"t",'
        b'"latency_ms":1e-7,"scores":{"x":1,"y":1e300,"z":0.30000000000000004},'
        b'"metadata":{"b":false,"i":-9223372036854775808,"f":-0.0,"s":"\\u2028\\u0000"},'
        b'"tokens":{"output":2},"status":"error","error_type":"Timeout"}',
        b'{"app_id":"a","timestamp":"2026-11-18T11:06:40Z",'
        b'"metadata":{"trace_id":"m","u":18446744073709551615}}',
    ]
    for body in bodies:
        event = TelemetryEvent.model_validate_json(body, context={"now": NOW})
        assert canonical_json(event) == _pydantic_canonical(event)


def test_canonical_json_falls_back_to_pydantic_where_orjson_refuses() -> None:
    # Validation keeps integers beyond 64 bits out; an event built without it still serialises.
    body = b'{"app_id":"a","timestamp":"2026-11-22T10:00:00Z","trace_id":"t"}'
    event = TelemetryEvent.model_validate_json(body, context={"now": NOW})
    built = event.model_copy(update={"metadata": {"i": 123456789012345678901234567890}})
    assert canonical_json(built) == _pydantic_canonical(built)
    assert b"123456789012345678901234567890" in canonical_json(built)


def test_canonical_json_of_a_constructed_event_follows_declared_order() -> None:
    # model_construct keeps the caller's key order; the canonical form must not.
    event = TelemetryEvent.model_validate_json(BODY, context={"now": NOW})
    shuffled = TelemetryEvent.model_construct(**dict(reversed(event.__dict__.items())))
    assert canonical_json(shuffled) == canonical_json(event)


def test_user_hash_is_the_keyed_hmac_and_stays_so_from_its_cache() -> None:
    enricher = Enricher(APPS, b"k1", "local")
    expected = hmac.new(b"k1", b"alice", hashlib.blake2b).hexdigest()[:32]
    assert enricher.user_hash("alice") == expected
    assert enricher.user_hash("alice") == expected
    for number in range(USER_HASH_CACHE_SIZE + 5):
        enricher.user_hash(f"user-{number}")
    assert enricher.user_hash("alice") == expected
    assert enricher.user_hash("bob") == hmac.new(b"k1", b"bob", hashlib.blake2b).hexdigest()[:32]


def test_partition_key_pads_the_year_to_four_digits() -> None:
    assert partition_key("a", datetime(999, 1, 2, 23, 59, tzinfo=UTC)) == "a:0999-01-02"
    assert partition_key("a", datetime(2026, 11, 22, tzinfo=UTC)) == "a:2026-11-22"


# Valid events of every shape the model takes: optional fields present, absent or null, the
# trace id at the top or in metadata, integers where floats are declared, any offset.
_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_identifier = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12)
_key = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=8)


def _with_a_trace_id(event: dict[str, object]) -> dict[str, object]:
    """Without a top-level trace_id the event takes the one in its metadata."""
    if "trace_id" in event:
        return event
    metadata = event.get("metadata")
    return {
        **event,
        "metadata": {**(metadata if isinstance(metadata, dict) else {}), "trace_id": "t-m"},
    }


_number = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(2**53), 2**53)
valid_events = st.fixed_dictionaries(
    {
        "app_id": st.from_regex(r"[A-Za-z0-9._:-]{1,16}", fullmatch=True),
        "timestamp": st.builds(
            lambda when, minutes: when.astimezone(timezone(timedelta(minutes=minutes))).isoformat(),
            st.datetimes(datetime(1970, 1, 2), datetime(2026, 11, 22), timezones=st.just(UTC)),
            st.integers(-900, 900),
        ),
    },
    optional={
        "trace_id": _identifier,
        "event_id": _identifier | st.none(),
        "span_id": _identifier | st.none(),
        "model_id": _identifier,
        "input_text": _text | st.none(),
        "output_text": _text,
        "latency_ms": st.floats(0, 1e9) | st.integers(0, 10**12) | st.none(),
        "status": st.sampled_from(["ok", "error"]),
        "error_type": _identifier,
        "tokens": st.fixed_dictionaries(
            {}, optional={"input": st.integers(0, 2**64 - 1), "output": st.integers(0, 10**6)}
        )
        | st.none(),
        "scores": st.dictionaries(_key, _number, max_size=4),
        "metadata": st.dictionaries(
            _key,
            _text | st.booleans() | st.integers(-(2**63), 2**64 - 1) | _number,
            max_size=4,
        ),
    },
).map(_with_a_trace_id)


@settings(max_examples=150, deadline=None)
@given(valid_events)
def test_what_ingest_passes_on_reads_back_as_the_same_event_with_the_same_id(
    fields: dict[str, object],
) -> None:
    sent = orjson.dumps(fields)
    (accepted,) = Decoder().decode(sent, NOW).accepted
    event = accepted.event
    body, event_id = sent_form(event)
    (again,) = Decoder().decode(body, NOW).accepted
    assert again.event == event
    assert canonical_json(again.event) == canonical_json(event)
    assert event_id == document_id(event) == document_id(again.event)
    # The processor stores the same document either way (ingest fields aside).
    assert enrich(body)[0].json_bytes() == enrich(sent)[0].json_bytes()


def test_an_event_with_a_user_id_is_passed_on_with_it_for_the_log_to_hash() -> None:
    event = Decoder().decode(BODY, NOW).accepted[0].event
    body, event_id = sent_form(event)
    assert orjson.loads(body)["user_id"] == "alice@example.com"
    assert event_id == document_id(event)


def test_token_counts_summing_beyond_64_bits_still_give_a_document() -> None:
    # Each count is valid (≤ 2**64 - 1); their total is not a 64-bit integer.
    body = orjson.dumps(
        {
            "app_id": "a",
            "timestamp": "2026-11-22T10:00:00Z",
            "trace_id": "t",
            "tokens": {"input": 2**64 - 1, "output": 5},
        }
    )
    (document,) = enrich(body)
    assert document.derived.tokens_total == 2**64 + 4
    assert orjson.loads(document.json_bytes())["tokens"] == {"input": 2**64 - 1, "output": 5}
    assert document.json_bytes() == document.model_dump_json().encode()


def test_app_metadata_cached_per_app_stays_bounded_and_right() -> None:
    # A producer that sends a new app id per event: the cache of their metadata stays bounded,
    # and an app configured by name still gets its own metadata after the cache turned over.
    enricher = Enricher(APPS, b"k", "local")
    for n in range(APP_FIELDS_CACHE_SIZE * 2 + 5):
        enricher._app(f"request-{n}")
    assert len(enricher._app_fields) <= APP_FIELDS_CACHE_SIZE
    assert enricher._app("checkout-bot")["owner"] == "payments"
