"""What a user id's keyed hash is made of, and user ids in rejected bytes and error messages
replaced by that hash, so every pseudonym of one user is the same wherever it is kept.

A user id is hashed as its value, as the accepted path reads it: a string as the string (JSON
escapes read, ``"al\\u0069ce"`` is ``alice``), another scalar as its JSON text (``42``,
``true``, ``1.50`` read as ``1.5``). Quarantine reads the value of a ``user_id`` member of a
rejected input the same way, in JSON of any encoding, compressed or not; what JSON does not
read is read as a Python literal, as an AMQP body kept as its repr writes one (``'alice'``,
``True``; bytes, ``b'alice'``, as UTF-8 text). So a quarantined input's hash is the
``user_hash`` of the same user's stored documents. A value neither reads (a string that is not
UTF-8, a lone surrogate) is in no stored document: it is hashed as its text between its quotes,
as written.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
import zlib
from collections.abc import Callable

import orjson

from schemas.quarantine import MAX_QUARANTINE_RAW_BYTES


def user_id_text(value: object) -> str:
    """The text a user id's hash is made of: a string itself, another scalar its JSON text."""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


# A user_id member's value: a JSON string, or any other scalar token. Python literals too: an
# AMQP sequence body, or a value body of a map, is kept as its repr (common.amqp.body_bytes),
# ``{'user_id': 'u-1'}``, or ``{b'user_id': b'u-1'}`` as pyamqp reads AMQP strings back.
_VALUE = rb"""b?"(?:[^"\\]|\\.)*"|b?'(?:[^'\\]|\\.)*'|[^,}\]\s]+"""
_USER_ID = re.compile(rb"""(["']user_id["']\s*:\s*)(""" + _VALUE + rb")")
# Any member with a scalar value (an object's or array's members are matched themselves): one
# whose key has a \u escape may be user_id too ("user\u005fid"), which only reading it tells.
_MEMBER = re.compile(rb'("(?:[^"\\]|\\.)*"\s*:\s*)(?![{\[])(' + _VALUE + rb")")
# Python's words for JSON's scalars, as a repr writes them.
_PYTHON_SCALARS = {b"True": "true", b"False": "false", b"None": "null"}


def _value_text(token: bytes) -> str:
    """The text ``user_hash`` takes for a user_id member's value written as ``token``: the
    module docstring says which."""
    try:
        return user_id_text(orjson.loads(token))
    except orjson.JSONDecodeError:
        pass
    if token in _PYTHON_SCALARS:
        return _PYTHON_SCALARS[token]
    shown = token.decode("utf-8", "backslashreplace")
    if token[:1] in (b"'", b'"', b"b"):
        value = _python_literal(token)
        if value is not None:
            return value
    quoted = shown.removeprefix("b")
    if len(quoted) > 1 and quoted[0] in "'\"" and quoted[-1] == quoted[0]:
        return quoted[1:-1]
    return shown


def _python_literal(token: bytes) -> str | None:
    """A Python string or bytes literal's value as text (bytes read as UTF-8), or None when
    ``token`` is not UTF-8, not such a literal, or its value is not Unicode text."""
    try:
        with warnings.catch_warnings():
            # An escape Python does not know is kept as written, with a warning to say so.
            warnings.simplefilter("ignore")
            value = ast.literal_eval(token.decode())
    except (UnicodeDecodeError, ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if not isinstance(value, str):
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        # A lone surrogate escaped in the literal: no user's text.
        return None
    return value


def _is_escaped_user_id(key: bytes) -> bool:
    """Whether a member's ``"key":`` text has an escape and reads as user_id."""
    if b"\\" not in key:
        return False
    try:
        return bool(orjson.loads(key.rstrip().removesuffix(b":").rstrip()) == "user_id")
    except orjson.JSONDecodeError:
        return False


def _user_id_members(raw: bytes) -> list[re.Match[bytes]]:
    """The matches of every user_id member of ``raw``, its key spelt out or escaped, in order
    and not overlapping."""
    found = list(_USER_ID.finditer(raw))
    if b"\\u" in raw:
        found += [m for m in _MEMBER.finditer(raw) if _is_escaped_user_id(m.group(1))]
    members, end = [], 0
    for member in sorted(found, key=lambda member: member.start()):
        if member.start() >= end:
            members.append(member)
            end = member.end()
    return members


def _readable(raw: bytes) -> tuple[bytes, bool]:
    """What of ``raw`` is read for user ids, and whether it may hold one: what gzip or zlib data
    holds (its start), as UTF-8 when it is JSON in UTF-16 or UTF-32; else ``raw`` itself.

    Compressed or wide data is read as such before any marker is looked for: its bytes may
    spell ``\\u`` or even ``user_id`` by chance, which said nothing of what it holds."""
    inflated = _inflated(raw)
    if inflated is not None:
        raw = inflated
    text = _wide_text(raw)
    if text is not None:
        return text, True
    return raw, b"user_id" in raw or b"\\u" in raw


def scrub_user_ids(raw: bytes, user_hash: Callable[[str], str]) -> bytes:
    """``raw`` with the value of every ``"user_id"`` member replaced by its keyed hash, as a
    string: a rejected input stays readable, its user does not. JSON in UTF-16 or UTF-32 is
    scrubbed as its UTF-8 text, gzip or zlib data as (the start of) what it holds."""
    # Compressed data is kept as what it holds, even without a user_id in its start: the
    # compressed bytes quarantine keeps could hold more than that start.
    raw, maybe = _readable(raw)
    if not maybe:
        return raw
    kept, end = [], 0
    for member in _user_id_members(raw):
        hashed = user_hash(_value_text(member.group(2)))
        kept += [raw[end : member.start()], member.group(1), b'"', hashed.encode(), b'"']
        end = member.end()
    return b"".join([*kept, raw[end:]])


def _wide_text(raw: bytes) -> bytes | None:
    """``raw`` as UTF-8 when it is JSON in UTF-16 or UTF-32 (RFC 4627's detection, a byte order
    mark or the zero bytes of its first characters) that may hold a user_id, else None."""
    encoding = json.detect_encoding(raw)
    if encoding.startswith("utf-8"):
        return None
    text = raw.decode(encoding, "backslashreplace")
    if "user_id" not in text and "\\u" not in text:
        return None
    return text.encode("utf-8", "backslashreplace")


# What of a compressed body is read to scrub it: quarantine keeps no more.
MAX_INFLATED_BYTES = MAX_QUARANTINE_RAW_BYTES


def _inflated(raw: bytes) -> bytes | None:
    """The first ``MAX_INFLATED_BYTES`` of ``raw`` decompressed when it is gzip or zlib data (a
    source's body is not decompressed, as ingest's is), else None."""
    if raw[:2] == b"\x1f\x8b":
        wbits = 31
    elif len(raw) > 1 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0:
        wbits = 15
    else:
        return None
    try:
        return zlib.decompressobj(wbits).decompress(raw, MAX_INFLATED_BYTES)
    except zlib.error:
        return None


def scrub_user_ids_in_text(text: str, raw: bytes, user_hash: Callable[[str], str]) -> str:
    """``text`` (an error message about ``raw``) with every user_id value of ``raw`` replaced
    by the hash ``scrub_user_ids`` gives it, however the message quotes it: as written, as its
    JSON or its repr (the hash kept in those quotes), or as the value itself."""
    readable, maybe = _readable(raw)
    if not maybe:
        return text
    shown: dict[str, str] = {}
    for member in _user_id_members(readable):
        token = member.group(2)
        value = _value_text(token)
        hashed = user_hash(value)
        as_json, as_repr = orjson.dumps(value).decode(), repr(value)
        written = token.decode("utf-8", "backslashreplace")
        quoted = [(form, _in_quotes_of(form, hashed)) for form in (written, as_json, as_repr)]
        bare = [(form, hashed) for form in (value, as_json[1:-1], as_repr[1:-1])]
        for form, replacement in quoted + bare:
            if form and form in text:
                shown.setdefault(form, replacement)
    if not shown:
        return text
    # One pass, the longest form first: a value inside its own quoted form (``"`` in ``"\\""``)
    # is not replaced alone, and a hash put in is never read as a value again.
    forms = sorted(shown, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, forms)))
    return pattern.sub(lambda match: shown[match.group()], text)


def _in_quotes_of(form: str, hashed: str) -> str:
    """``hashed`` in the quotes (and ``b`` prefix) ``form`` is written in, if any."""
    quoted = form.removeprefix("b")
    if len(quoted) > 1 and quoted[0] in "'\"" and quoted[-1] == quoted[0]:
        return form[: len(form) - len(quoted) + 1] + hashed + quoted[-1]
    return hashed
