"""No raw user id survives quarantine's scrub, whatever shape the rejected input has: a value
cut off by the end of the input, an array or object value, an escaped key after strings that
look like members, members inside strings, several members, any spacing, long values. Each
secret is gone and the hash the module docstring names is in its place."""

from __future__ import annotations

import gzip
import re
import zlib
from datetime import UTC, datetime

import orjson
import pytest

from common.amqp import body_bytes
from schemas import AppDirectory
from stream.decode import Decoder
from stream.enrich import Enricher
from stream.pseudonyms import scrub_user_ids, scrub_user_ids_in_text

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
ENRICHER = Enricher(AppDirectory(), b"pseudonym-key", "local")
HASH = ENRICHER.user_hash
EVENT = b'{"app_id":"a1","timestamp":"2026-12-07T10:00:00Z","trace_id":"t1",'


def _assert_scrubbed(kept: bytes, secrets: tuple[str, ...], hashed: str) -> None:
    for secret in secrets:
        assert secret.encode() not in kept, (secret, kept[:300])
    assert HASH(hashed).encode() in kept, (hashed, kept[:300])


def _quarantined(raw: bytes) -> str:
    """What quarantine keeps of ``raw``'s rejected items, one a line."""
    rejected = Decoder().decode(raw, NOW).rejected
    assert rejected
    return "\n".join(ENRICHER.quarantine(item, None, NOW).raw for item in rejected)


# A value the input ends in: replaced through the end, hashed as its text after its quote.
CUT_OFF = [
    (EVENT + b'"user_id":"Jane Doe', ("Jane", "Doe"), "Jane Doe"),
    (EVENT + b'"user_id": "Jane Doe\\" Smith', ("Jane", "Smith"), 'Jane Doe\\" Smith'),
    (EVENT + b'"metadata":{"user_id":"Mary Ann Lee', ("Mary", "Ann", "Lee"), "Mary Ann Lee"),
    (b"{'app_id': 'a1', 'user_id': 'Jane Doe", ("Jane", "Doe"), "Jane Doe"),
    (b"{b'app_id': b'a1', b'user_id': b'Jane Doe", ("Jane", "Doe"), "Jane Doe"),
    (EVENT + b'"user_id":\n  "Jane\tDoe\n', ("Jane", "Doe"), "Jane\tDoe\n"),
    (
        EVENT + b'"user_id":["jane@example.com", "jane doe',
        ("jane",),
        '["jane@example.com", "jane doe',
    ),
    (EVENT + b'"user_id":{"id": "dave", "n": [1, ', ("dave",), '{"id": "dave", "n": [1,'),
    (EVENT + b'"user_id": Jane Doe', ("Jane", "Doe"), "Jane Doe"),
]


@pytest.mark.parametrize(("raw", "secrets", "hashed"), CUT_OFF)
def test_a_value_cut_off_by_the_end_of_the_input_is_replaced_through_the_end(
    raw: bytes, secrets: tuple[str, ...], hashed: str
) -> None:
    kept = scrub_user_ids(raw, HASH)
    _assert_scrubbed(kept, secrets, hashed)
    assert kept.rstrip().endswith(b'"' + HASH(hashed).encode() + b'"')
    assert not any(secret in _quarantined(raw) for secret in secrets)
    message = f"cannot read {raw.decode()!r}"
    assert not any(secret in scrub_user_ids_in_text(message, raw, HASH) for secret in secrets)


def test_compressed_data_cut_off_inside_a_value_keeps_none_of_it() -> None:
    body = EVENT + b'"user_id":"Jane Doe-Smith of Example Street 42"}'
    prefix = EVENT + b'"user_id":'
    whole = gzip.compress(body, mtime=0)
    cut_inside = 0
    for end in range(len(whole) - 1, 20, -1):
        held = zlib.decompressobj(31).decompress(whole[:end])
        if not held.startswith(prefix + b'"J') or held == body:
            continue
        cut_inside += 1
        kept = scrub_user_ids(whole[:end], HASH)
        assert re.fullmatch(re.escape(prefix) + rb'"[0-9a-f]{32}"', kept), (end, kept)
    assert cut_inside > 5


# An array or object value is replaced whole, hashed as its compact JSON text (as written when
# JSON does not read it), whatever key spelling and spacing.
CONTAINERS = [
    (
        b'"user_id":["jane@example.com", "jane.doe@example.com"]',
        '["jane@example.com","jane.doe@example.com"]',
    ),
    (b'"user_id" : [ "S3" ]', '["S3"]'),
    (b'"user_id":{"id": "davesecret"}', '{"id":"davesecret"}'),
    (b'"user\\u005fid":["S3", {"k": ["davesecret"]}]', '["S3",{"k":["davesecret"]}]'),
    (b'"user\\u005fid" :\n{"id": "davesecret", "n": "]}"}', '{"id":"davesecret","n":"]}"}'),
    (b'"\\u0075ser_id":[[], ["S3"]]', '[[],["S3"]]'),
    (b'"metadata":{"a":{"user_id":{"id":"davesecret"}}}', '{"id":"davesecret"}'),
    (b'"user_id":["S3", "davesecret",]', '["S3", "davesecret",]'),
]


@pytest.mark.parametrize(("member", "hashed"), CONTAINERS)
def test_an_array_or_object_value_is_replaced_whole(member: bytes, hashed: str) -> None:
    raw = EVENT + member + b',"after":"kept"}'
    kept = scrub_user_ids(raw, HASH)
    _assert_scrubbed(kept, ("S3", "davesecret", "jane"), hashed)
    assert kept.endswith(b',"after":"kept"}')
    assert "davesecret" not in _quarantined(raw) and "S3" not in _quarantined(raw)


def test_a_python_literal_array_value_is_replaced_whole_as_written() -> None:
    for raw in (
        body_bytes("value", {"app_id": "a1", "user_id": ["jane doe", "S3"]}),
        b"{b'app_id': b'a1', b'user_id': [b'jane doe', b'S3'], b'n': 1}",
    ):
        kept = scrub_user_ids(raw, HASH)
        written = raw.split(b"user_id': ")[1].split(b"]")[0] + b"]"
        _assert_scrubbed(kept, ("jane", "S3"), written.decode())
        assert kept.endswith(b"}")


# An escaped key after strings a member regex could start in (``":"``, ``","``, quotes).
ESCAPED_AFTER_LOOKALIKES = [
    b'"metadata":{"tags":["x",":"]},"user\\u005fid":"jdoe-4711"',
    b'"metadata":{"tags":[":", ":", ":"]},"user\\u005fid":"jdoe-4711"',
    b'"note":"\\":\\"","user\\u005fid":"jdoe-4711"',
    b'"tags":["a\\"",":",","],"\\u0075\\u0073er_id" : "jdoe-4711"',
    b'"note":"\',\'user_id\': ","user_id":"jdoe-4711"',
    b'"m":{"k":"\\",\\"user_id\\":"},"user_id":"jdoe-4711"',
]


@pytest.mark.parametrize("members", ESCAPED_AFTER_LOOKALIKES)
def test_a_key_after_strings_that_look_like_members_is_read(members: bytes) -> None:
    cut_off = EVENT.replace(b"t1", b"t3") + members
    kept = scrub_user_ids(cut_off, HASH)
    _assert_scrubbed(kept, ("jdoe", "4711"), "jdoe-4711")
    assert "jdoe" not in _quarantined(cut_off)
    # Valid JSON rejected as a whole keeps the same hash where a JSON reader reads user_id.
    envelope = b'{"events":[' + cut_off + b'}],"source":"web"}'
    kept = scrub_user_ids(envelope, HASH)
    _assert_scrubbed(kept, ("jdoe", "4711"), "jdoe-4711")
    assert orjson.loads(kept)["events"][0]["user_id"] == HASH("jdoe-4711")
    assert "jdoe" not in _quarantined(envelope)


def test_every_member_is_replaced_wherever_it_is_and_however_it_is_spaced() -> None:
    raw = (
        b'[{"user_id":"alice one","metadata":{"a":{"b":[{"user_id":"bob two"}]}}},\n'
        b' {"user_id"\n:\n"carol \\"three\\"",  "x": 1}, {"user_id"\t:\t4711}, '
        b'{"user_id": "dave\\\\", "user\\u005fid": "eve five"}, "user_id", "user_id:"]'
    )
    kept = scrub_user_ids(raw, HASH)
    for secret, hashed in (
        ("alice", "alice one"),
        ("bob", "bob two"),
        ("carol", 'carol "three"'),
        ("4711", "4711"),
        ("dave", "dave\\"),
        ("eve", "eve five"),
    ):
        _assert_scrubbed(kept, (secret,), hashed)
    kept_json = orjson.loads(kept)
    assert kept_json[0]["metadata"]["a"]["b"][0]["user_id"] == HASH("bob two")
    assert kept_json[-2:] == ["user_id", "user_id:"]


def test_members_inside_strings_are_replaced_too() -> None:
    """A repr or JSON quoted in a message field holds the user ids it quotes."""
    raw = EVENT + (
        b"\"error\":\"bad item {'user_id': 'bob two', 'n': 1}\","
        b'"detail":"{\\"user_id\\": \\"carol three\\"}",'
        b'"user_id":"alice"'
    )
    kept = scrub_user_ids(raw, HASH)
    for secret, hashed in (("bob", "bob two"), ("carol", "carol three"), ("alice", "alice")):
        _assert_scrubbed(kept, (secret,), hashed)
    assert orjson.loads(kept + b"}")["detail"] == f'{{"user_id": "{HASH("carol three")}"}}'


def test_a_key_whose_opening_quote_an_unclosed_string_took_is_read() -> None:
    for raw in (
        b'{"app_id":"a1, "user_id":"bob two"}',
        b'{"app_id": \'a1, "user_id": "bob two"}',
        b'{"app_id":"a1, "user\\u005fid" : "bob two", "n": 1}',
    ):
        kept = scrub_user_ids(raw, HASH)
        _assert_scrubbed(kept, ("bob",), "bob two")


def test_a_very_long_value_is_replaced_whole() -> None:
    secret = "s3cret " * 50_000
    for value in (orjson.dumps(secret), orjson.dumps([secret, secret]), b'"' + secret.encode()):
        kept = scrub_user_ids(EVENT + b'"user_id":' + value + b',"n":1}', HASH)
        assert b"s3cret" not in kept
        assert len(kept) < 200


def test_a_megabyte_body_is_scrubbed_whole() -> None:
    """Quarantine scrubs what it is given at once: every member of a 1 MB body, each read
    once (no scan starts again at each member)."""
    items = b",".join(b'{"user_id":"user-%d","tags":["x",":"],"k":"v"}' % i for i in range(20_000))
    raw = b'{"events":[' + items + b'],"user\\u005fid":["last one"],"note":"' + b"y" * 100_000
    assert len(raw) > 1_000_000
    kept = scrub_user_ids(raw, HASH)
    assert b"user-" not in kept and b"last one" not in kept
    assert kept.count(b'"user_id":"') == 20_000
    assert HASH("user-19999").encode() in kept
    assert HASH('["last one"]').encode() in kept


def test_an_error_message_quoting_an_array_value_or_its_items_shows_its_hash() -> None:
    raw = EVENT + b'"user_id":["jane@example.com", "jane.doe@example.com", 31337],"n":1}'
    hashed = HASH('["jane@example.com","jane.doe@example.com",31337]')
    for message in (
        "input_value=['jane@example.com', 'jane.doe@example.com', 31337]",
        'user_id ["jane@example.com", "jane.doe@example.com", 31337] refused',
        "unknown user jane.doe@example.com",
    ):
        text = scrub_user_ids_in_text(message, raw, HASH)
        assert "jane" not in text and "31337" not in text, text
        assert hashed in text


def test_an_apostrophe_inside_a_word_starts_no_string() -> None:
    """Taken for a Python literal's quote, it made all up to the next one a string: members
    after it were read from the wrong place and a value kept (``o'brien secret``)."""
    for raw, secret, hashed in (
        (b'{note: it\'s bad, "user_id": "o\'brien secret"}', "brien", "o'brien secret"),
        (b"{'app_id': 'a1, 'user_id': 'bob two'}", "bob", "bob two"),
        (b"{\"msg\": \"don't use 'user_id': 'bob two'\"}", "bob", "bob two"),
        (b'{"user_id": o\'brien secret, "n": 1}', "brien", "o'brien secret"),
    ):
        kept = scrub_user_ids(raw, HASH)
        _assert_scrubbed(kept, (secret,), hashed)
        assert kept.endswith(b"}"), kept
