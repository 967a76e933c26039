"""``may_hold_user_id`` is what decides whether a producer's body is logged as sent: it says
False only for a body that surely holds no user_id member in any form the scrub reads, so a
user id in UTF-16 or UTF-32, escaped or compressed, is never logged raw."""

from __future__ import annotations

import gzip
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import AppDirectory
from stream.enrich import Enricher
from stream.pseudonyms import may_hold_user_id, scrub_user_ids

HASH = Enricher(AppDirectory(), b"pseudonym-key", "local").user_hash
EVENT = '{"app_id":"a1","timestamp":"2026-12-07T10:00:00Z","trace_id":"t1","user_id":"%s"}\n'
WIDE = ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
SPELLINGS = ("utf-8", *WIDE)


def _assert_gone(kept: bytes, secret: str) -> None:
    for encoding in SPELLINGS:
        assert (
            secret.encode(encoding).removeprefix(b"\xff\xfe").removeprefix(b"\xfe\xff") not in kept
        )
    assert secret not in kept.decode("utf-8", "replace")


def test_a_wide_body_may_hold_one_and_is_scrubbed() -> None:
    """The UTF-8 bytes ``user_id`` and ``\\u`` are not in a UTF-16 or UTF-32 body: it was
    logged as sent, its user id with it."""
    for encoding in WIDE:
        body = (EVENT % "wideSecret").encode(encoding)
        assert b"user_id" not in body and b"\\u" not in body
        assert may_hold_user_id(body), encoding
        kept = scrub_user_ids(body, HASH)
        _assert_gone(kept, "wideSecret")
        assert HASH("wideSecret").encode() in kept, encoding


def test_every_form_the_scrub_reads_may_hold_one() -> None:
    plain = (EVENT % "Secret").encode()
    escaped = plain.replace(b"user_id", b"user\\u005fid")
    wide = (EVENT % "Secret").replace("user_id", "user\\u005fid").encode("utf-16-le")
    bodies = [
        plain,
        escaped,
        wide,
        b"\x00" + wide,
        b"junk" + (EVENT % "Secret").encode("utf-32-be"),
    ]
    bodies += [compress(body) for body in bodies[:3] for compress in (gzip.compress, zlib.compress)]
    bodies += [gzip.compress(gzip.compress(plain)), zlib.compress(gzip.compress(escaped))]
    for body in bodies:
        assert may_hold_user_id(body), body[:40]
        _assert_gone(scrub_user_ids(body, HASH), "Secret")


def test_compressed_data_not_read_to_its_end_may_hold_one() -> None:
    """Quarantine keeps what the start of such data holds; the log would keep all of it."""
    empty = b'{"app_id":"a1"}'
    whole = gzip.compress(empty)
    for body in (whole[:-4], whole[:12], whole + b"trailing", whole + gzip.compress(empty)):
        assert may_hold_user_id(body), body
    assert may_hold_user_id(whole[:10] + b"\x00" * 40 + whole[50:])


def test_a_body_without_one_in_any_form_holds_none() -> None:
    without = '{"app_id":"a1","timestamp":"2026-12-07T10:00:00Z","trace_id":"t1","user":"x"}'
    bodies = [without.encode(encoding) for encoding in SPELLINGS]
    bodies += [gzip.compress(without.encode()), zlib.compress(without.encode("utf-16"))]
    for body in bodies:
        assert not may_hold_user_id(body), body[:40]


@settings(max_examples=60, deadline=None)
@given(
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ ", min_size=6, max_size=40).map(lambda text: f"Q{text}Z"),
    st.sampled_from(SPELLINGS),
    st.sampled_from([b"", b"\x00", b"x"]),
    st.sampled_from(["plain", "escaped", "gzip", "zlib"]),
)
def test_a_user_id_in_any_form_is_held_and_scrubbed(
    secret: str, encoding: str, prefix: bytes, form: str
) -> None:
    text = EVENT % secret
    if form == "escaped":
        text = text.replace("user_id", "\\u0075ser\\u005fid")
    body = prefix + text.encode(encoding)
    if form == "gzip":
        body = gzip.compress(body)
    elif form == "zlib":
        body = zlib.compress(body)
    assert may_hold_user_id(body)
    _assert_gone(scrub_user_ids(body, HASH), secret)
