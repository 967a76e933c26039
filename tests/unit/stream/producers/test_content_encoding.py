"""Compressed request bodies: read within the limit, refused when corrupt or of another
encoding."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from stream.producers.content_encoding import Corrupt, TooLarge, Unsupported, decoded_body

BODY = b'{"app_id":"a","timestamp":"2026-11-22T11:00:00Z","trace_id":"t"}'


def test_gzip_members_in_a_row_are_one_body() -> None:
    assert decoded_body(gzip.compress(BODY) + gzip.compress(BODY), "gzip", 1000) == BODY * 2
    # Members larger than the slices the input is fed in, ending inside one.
    big = random.Random(1).randbytes(40_000)
    assert decoded_body(gzip.compress(big) * 3, "gzip", 200_000) == big * 3
    with pytest.raises(Corrupt, match="data after the end"):
        decoded_body(zlib.compress(big) + b"x" * 20_000, "deflate", 200_000)


def test_codings_are_undone_last_first_and_identity_is_none() -> None:
    twice = gzip.compress(zlib.compress(BODY))
    assert decoded_body(twice, "deflate, gzip", 1000) == BODY
    assert decoded_body(BODY, "identity", 1000) == BODY
    assert decoded_body(BODY, None, 10) == BODY  # the limit is the reader's, before this
    assert decoded_body(gzip.compress(BODY), "GZip", 1000) == BODY


def test_the_limit_is_on_the_decompressed_size_exactly() -> None:
    assert decoded_body(gzip.compress(b"x" * 1000), "gzip", 1000) == b"x" * 1000
    with pytest.raises(TooLarge, match="exceeds 1000 bytes once decompressed"):
        decoded_body(gzip.compress(b"x" * 1001), "gzip", 1000)
    # Two members, each within the limit, together beyond it.
    with pytest.raises(TooLarge):
        decoded_body(gzip.compress(b"x" * 600) * 2, "gzip", 1000)


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (gzip.compress(BODY, mtime=0)[:-4], "gzip"),
        (BODY, "gzip"),
        (zlib.compress(BODY) + b"{}", "deflate"),
        (b"", "gzip"),
    ],
    # Named: gzip data carries the time it was made, and workers must collect the same ids.
    ids=["cut-short", "not-compressed", "data-after-the-stream", "empty"],
)
def test_data_that_is_not_of_its_encoding_is_corrupt(data: bytes, encoding: str) -> None:
    with pytest.raises(Corrupt, match=f"not valid {encoding} data"):
        decoded_body(data, encoding, 1000)


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_other_encodings_are_refused_by_name(encoding: str) -> None:
    with pytest.raises(Unsupported, match="is not supported"):
        decoded_body(gzip.compress(BODY), encoding, 1000)


def test_a_record_keeps_what_decompressed_never_compressed_bytes() -> None:
    compressed = gzip.compress(BODY * 50)
    with pytest.raises(Corrupt) as cut:
        decoded_body(compressed[:-6], "gzip", 10_000)
    assert cut.value.kept(compressed[:-6]) == BODY * 50
    # Plain JSON labelled gzip: nothing decompressed, and it is no compressed data.
    with pytest.raises(Corrupt) as plain:
        decoded_body(BODY, "gzip", 10_000)
    assert plain.value.kept(BODY) == BODY
    # A stream whose check fails at its end: nothing is readable, and the bytes are not kept.
    flipped = bytearray(compressed)
    flipped[-5] ^= 0xFF
    for data, encoding in ((bytes(flipped), "gzip"), (zlib.compress(BODY)[:-1] + b"!", "deflate")):
        with pytest.raises(Corrupt) as failed:
            decoded_body(data, encoding, 10_000)
        assert failed.value.kept(data) == b""
