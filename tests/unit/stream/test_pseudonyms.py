"""Every pseudonym of one user is the same: the hash quarantine keeps in place of a rejected
input's user_id (or metadata.user_id) is the one the user's stored documents carry, however the
input came (JSON as sent, escaped, UTF-16/32, compressed, an AMQP body's repr) and in the error
messages that quote the value."""

from __future__ import annotations

import ast
import gzip
import json
import re
import zlib
from collections.abc import Callable
from datetime import UTC, datetime

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.amqp import body_bytes
from schemas import AppDirectory
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.ports import ReceivedEvent
from stream.pseudonyms import scrub_user_ids, scrub_user_ids_in_text

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ENRICHER = Enricher(AppDirectory(), b"pseudonym-key", "local")
HASH = re.compile(r"[0-9a-f]{32}")

# User ids as producers write them: quotes, backslashes, control characters, non-ASCII and
# astral characters (escaped as surrogate pairs by an ASCII-only writer), Python quotes.
user_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
_SPELLED = ('"', "'", 'a"b', "a\\b", "it's", "\\u0041", "é", "\x00\x1f", "😀", "b'x'", "'q'", '"q"')


def spelled_examples(test: Callable[[str], None]) -> Callable[[str], None]:
    """``test`` run on each of ``_SPELLED`` too, every time."""
    for user_id in ("alice", *_SPELLED):
        test = example(user_id)(test)
    return test


# Scalars a metadata.user_id may hold (validation takes 64-bit integers and finite floats).
scalars = (
    st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
)


def _event(app_id: str, **fields: object) -> dict[str, object]:
    return {"app_id": app_id, "timestamp": "2026-11-22T10:00:00Z", "trace_id": "t", **fields}


def _stored(user_id: str | None, metadata_user_id: object) -> tuple[str | None, str]:
    """The (user_hash, metadata.user_id) an accepted event with these values is stored with."""
    fields: dict[str, object] = {"metadata": {"user_id": metadata_user_id}}
    if user_id is not None:
        fields["user_id"] = user_id
    body = orjson.dumps(_event("a", **fields))
    [accepted] = Decoder().decode(body, NOW).accepted
    doc = ENRICHER.document(accepted.event, ReceivedEvent(body, "0", 0, NOW), 0, NOW, False)
    stored = doc.metadata["user_id"]
    assert isinstance(stored, str)
    return doc.user_hash, stored


def _quarantined(raw: bytes) -> str:
    """What quarantine keeps of ``raw``, rejected as a whole, as text."""
    rejected = Decoder().decode(raw, NOW).rejected
    assert len(rejected) == 1 and rejected[0].raw == raw, rejected
    record = ENRICHER.quarantine(rejected[0], None, NOW)
    assert record.raw_encoding == "utf-8", record.raw
    return record.raw


def _json_variants(event: dict[str, object]) -> dict[str, bytes]:
    """Bodies quarantine keeps as sent (``"extra"`` beside ``events`` rejects the whole body)
    holding ``event``, written every way a producer may write it."""
    envelope = {"events": [event], "extra": 1}
    ascii_only = json.dumps(envelope, ensure_ascii=True)
    escaped_keys = ascii_only.replace('"user_id"', '"user\\u005fid"')
    return {
        "utf-8": orjson.dumps(envelope),
        "ascii escapes": ascii_only.encode(),
        "escaped keys": escaped_keys.encode(),
        **{name: ascii_only.encode(name) for name in ("utf-16", "utf-16-be", "utf-32-le")},
        "gzip": gzip.compress(orjson.dumps(envelope)),
        "zlib": zlib.compress(json.dumps(envelope, ensure_ascii=False).encode()),
    }


def _kept_json(text: str) -> tuple[object, object]:
    kept = orjson.loads(text)["events"][0]
    return kept.get("user_id"), kept["metadata"]["user_id"]


@settings(max_examples=200, deadline=None)
@given(user_ids)
@spelled_examples
def test_a_quarantined_user_id_is_hashed_as_the_stored_documents_hash_it(user_id: str) -> None:
    user_hash, metadata_hash = _stored(user_id, user_id)
    assert user_hash == metadata_hash == ENRICHER.user_hash(user_id)
    # Validation rejects it (its app id), quarantine keeps the item as parsed.
    [rejected] = Decoder().decode(orjson.dumps(_event("a b", user_id=user_id)), NOW).rejected
    assert orjson.loads(ENRICHER.quarantine(rejected, None, NOW).raw)["user_id"] == user_hash
    event = _event("a b", user_id=user_id, metadata={"user_id": user_id})
    for name, raw in _json_variants(event).items():
        assert _kept_json(_quarantined(raw)) == (user_hash, user_hash), name
    # An AMQP body kept as its repr: strings as str, or as bytes (pyamqp's reading).
    as_bytes = {b"app_id": b"a b", b"user_id": user_id.encode(), b"metadata": {b"user_id": 1}}
    for raw in (
        body_bytes("value", event),
        body_bytes("sequence", iter([[event]])),
        body_bytes("value", as_bytes),
    ):
        kept = ast.literal_eval(_quarantined(raw))
        kept = kept[0][0] if isinstance(kept, list) else kept
        assert kept.get("user_id", kept.get(b"user_id")) == user_hash, raw


@settings(max_examples=200, deadline=None)
@given(scalars)
@example(987654321)
@example(2**64 - 1)
def test_a_quarantined_scalar_user_id_is_hashed_as_a_stored_metadata_user_id(
    value: object,
) -> None:
    _, stored = _stored(None, value)
    event = _event("a b", user_id=value, metadata={"user_id": value})
    for name, raw in _json_variants(event).items():
        assert _kept_json(_quarantined(raw)) == (stored, stored), name
    kept = ast.literal_eval(_quarantined(body_bytes("value", event)))
    assert (kept["user_id"], kept["metadata"]["user_id"]) == (stored, stored)


def test_a_number_is_hashed_as_the_value_it_reads_as_however_it_is_spelled() -> None:
    """The accepted path reads ``1.50`` as 1.5, ``1E2`` as 100.0, an integer beyond 64 bits as
    a float: quarantine hashes the value so read, not the spelling."""
    for spelled in (b"1.50", b"1E2", b"-0.0", b"0.1e1", b"100000000000000000000", b"true"):
        metadata = b'{"user_id":' + spelled + b"}"
        body = orjson.dumps(_event("a"))[:-1] + b',"metadata":' + metadata + b"}"
        [accepted] = Decoder().decode(body, NOW).accepted
        doc = ENRICHER.document(accepted.event, ReceivedEvent(body, "0", 0, NOW), 0, NOW, False)
        rejected = body.replace(b'"app_id":"a"', b'"app_id":"a b"')
        kept = orjson.loads(scrub_user_ids(rejected, ENRICHER.user_hash))
        assert kept["metadata"]["user_id"] == doc.metadata["user_id"], spelled


def test_a_value_nothing_reads_is_hashed_as_written_between_its_quotes() -> None:
    """Not UTF-8, an escape JSON does not know, a lone surrogate: no document can hold such a
    user id, so its hash is of its text as written (invalid bytes as \\x escapes), never of
    the value with its quotes and never a failure."""
    hashed = ENRICHER.user_hash
    for written, text in (
        (b'"alice\xe9"', "alice\\xe9"),
        (b'"a\\qb"', "a\\qb"),
        (b'"\\ud800x"', "\\ud800x"),
        (b"'\\ud800'", "\\ud800"),
        (b"alice", "alice"),
    ):
        raw = b'{"app_id": "a b", "user_id": ' + written + b', "n": 1'
        kept = scrub_user_ids(raw, hashed)
        assert kept == b'{"app_id": "a b", "user_id": "' + hashed(text).encode() + b'", "n": 1'


def _scrubbed_messages(value: str, raw: bytes, hash_: Callable[[str], str]) -> list[str]:
    """An error message quoting the value each way an exception may (as it is, its repr, its
    JSON), scrubbed, with the hash put in stripped of the quotes around it."""
    return [
        scrub_user_ids_in_text(message, raw, hash_).strip("'\"")
        for message in (value, repr(value), orjson.dumps(value).decode())
    ]


@settings(max_examples=200, deadline=None)
@given(user_ids)
@spelled_examples
def test_an_error_message_quoting_a_user_id_shows_the_same_hash(user_id: str) -> None:
    user_hash, _ = _stored(user_id, 1)
    event = _event("a b", user_id=user_id)
    raws = [*_json_variants(event).values(), body_bytes("value", event)]
    for raw in raws:
        assert _scrubbed_messages(user_id, raw, ENRICHER.user_hash) == [user_hash] * 3, raw


def test_every_user_id_of_a_message_is_replaced_once() -> None:
    """A hash put in is not read as another user's value (``a`` is in many hashes)."""
    raw = b'[{"user_id": "bob"}, {"user_id": "a"}]'
    text = scrub_user_ids_in_text("users a, bob", raw, ENRICHER.user_hash)
    assert text == f"users {ENRICHER.user_hash('a')}, {ENRICHER.user_hash('bob')}"


def test_compressed_or_wide_bytes_that_spell_an_escape_by_chance_are_still_read() -> None:
    """The bytes ``\\u`` in gzip data, or in UTF-16 (the code unit of 畜 is 5C 75), were taken
    for an escape in UTF-8 JSON: the body was scrubbed as it was, so the user_id it holds was
    kept (compressed, or spelt with zero bytes)."""
    gzipped = gzip.compress(b'{"app_id": "a b", "user_id": "alice-29696"}', mtime=0)
    wide = '{"app_id": "畜", "user_id": "alice-1"}'.encode("utf-16-le")
    for raw, user_id in ((gzipped, "alice-29696"), (wide, "alice-1")):
        assert b"\\u" in raw
        kept = orjson.loads(_quarantined(raw))
        assert kept["user_id"] == ENRICHER.user_hash(user_id), raw
