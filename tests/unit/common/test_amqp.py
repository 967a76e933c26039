from __future__ import annotations

from common.amqp import body_bytes


def test_every_kind_of_body_keeps_its_content() -> None:
    assert body_bytes("data", [b"ab", bytearray(b"c")]) == b"abc"
    assert body_bytes("value", b"\xff raw") == b"\xff raw"
    assert body_bytes("value", '{"a": 1}') == b'{"a": 1}'
    assert body_bytes("value", {"a": 1}) == b"{'a': 1}"
    assert body_bytes("value", None) == b""
    # The SDKs hand sequence sections over as a generator.
    assert body_bytes("sequence", (section for section in ([1, "x"], [2]))) == b"[[1, 'x'], [2]]"
