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

No stored document holds an array or object as a user id either: such a value is replaced
whole, hashed as its compact JSON text (``["a","b"]``) when JSON reads it, else as written. A
value the input ends in (a string never closed, an array never closed: a cut-off body) is
replaced through the end, hashed as its text after its opening quote. Members are found by
reading the input token by token, strings whole, so no text inside a string is taken for a
member; a string that holds members itself (a repr or JSON quoted in a message) has them
replaced too. ``may_hold_user_id`` tells, without scrubbing, whether an input may hold such a
member at all: an input it says holds none may be kept as it is.
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


# A string as written: JSON's double quotes, or a Python literal's single quotes (its ``b``
# prefix is read as text before it). A backslash escapes what follows, so an escaped quote never
# ends one; one never closed runs to the end (a cut-off body). Group 1 or 2: its closing quote.
_DOUBLE = rb'"[^"\\]*(?:\\.?[^"\\]*)*(")?'
_SINGLE = rb"'[^'\\]*(?:\\.?[^'\\]*)*(')?"
# What a member is looked for in: a string, or a run of anything else.
_SCAN = re.compile(rb"""[^"']+|""" + _DOUBLE + b"|" + _SINGLE, re.DOTALL)
# What a value is read as: strings, brackets, commas, whitespace, runs of anything else.
_TOKEN = re.compile(
    rb"""\s+|""" + _DOUBLE + b"|" + _SINGLE + rb"""|[\[\]{},]|[^\s"'\[\]{},]+""", re.DOTALL
)
_COLON = re.compile(rb"\s*:\s*")
# A key's text at the end of a run outside strings, before the quote that closes it.
_UNOPENED_KEY = re.compile(rb"((?:\w|\\u[0-9A-Fa-f]{4})+)\\?\Z")
# The longest a user_id key is written: every character a \\u escape.
_MAX_KEY_BYTES = 48
_QUOTES = b"\"'"
# What a Python literal's string follows: the start, a bracket, a separator or whitespace.
_SINGLE_QUOTE_AFTER = b" \t\n\r\f\v([{,:="
_SPACE = b" \t\n\r\f\v"
_USER_ID_KEYS = (b'"user_id"', b"'user_id'")
# A string is read for members inside it this many strings deep (a repr in JSON in a message).
_MAX_NESTING = 3
# Python's words for JSON's scalars, as a repr writes them.
_PYTHON_SCALARS = {b"True": "true", b"False": "false", b"None": "null"}

# What scrubbing found: each member's value as written and the text its hash is made of.
_Seen = list[tuple[bytes, str]]


def _scrubbed(
    raw: bytes, quote: bytes, nesting: int, user_hash: Callable[[str], str], seen: _Seen
) -> bytes:
    """``raw`` with every user_id member's value replaced by its hash in ``quote``."""
    kept, end = [], 0
    for start, stop, replacement in _replacements(
        raw, 0, len(raw), quote, nesting, user_hash, seen
    ):
        kept += [raw[end:start], replacement]
        end = stop
    return b"".join([*kept, raw[end:]])


def _replacements(
    raw: bytes,
    start: int,
    end: int,
    quote: bytes,
    nesting: int,
    user_hash: Callable[[str], str],
    seen: _Seen,
) -> list[tuple[int, int, bytes]]:
    """The (start, end, bytes) replacements, in order, that scrub ``raw[start:end]``: the value
    of every member whose key reads as user_id, hashed in ``quote``, and what the strings that
    hold members are scrubbed to."""
    found: list[tuple[int, int, bytes]] = []
    pos = start
    while pos < end:
        token = _SCAN.match(raw, pos, end)
        assert token is not None  # every byte starts a token
        token_end = token.end()
        if raw[pos] not in _QUOTES or not _opens_string(raw, pos, start):
            if raw[pos] in _QUOTES:
                token_end = pos + 1
            # Outside strings, as read: a key there lost its opening quote to a string before
            # it that never closed where meant (``{"a":"x, "user_id":"bob"}``).
            key = _UNOPENED_KEY.search(raw, max(pos, token_end - _MAX_KEY_BYTES), token_end)
            colon = _COLON.match(raw, token_end + 1, end) if key else None
            if key and colon and _reads_as_user_id(key.group(1)):
                pos = _replace_value(raw, colon.end(), end, quote, user_hash, seen, found)
            else:
                pos = token_end
            continue
        colon = _COLON.match(raw, token_end, end)
        if colon is not None and _is_user_id_key(token.group()):
            pos = _replace_value(raw, colon.end(), end, quote, user_hash, seen, found)
            continue
        if nesting < _MAX_NESTING and (
            raw.find(b"user", pos, token_end) >= 0 or raw.find(b"\\u", pos, token_end) >= 0
        ):
            closed = token.group(1) is not None or token.group(2) is not None
            found += _string_replacements(raw, pos, token_end, closed, nesting + 1, user_hash, seen)
        pos = token_end
    return found


def _opens_string(raw: bytes, pos: int, start: int) -> bool:
    """Whether the quote at ``pos`` starts a string: a double quote does; a single quote where
    a Python literal's may start, not inside a word (``it's``, ``o'brien``), which would make
    all that follows it up to the next one a string."""
    if raw[pos] == ord('"'):
        return True
    before = pos - 1
    if before >= start and raw[before] in b"bB":
        before -= 1
    return before < start or raw[before] in _SINGLE_QUOTE_AFTER


def _replace_value(
    raw: bytes,
    start: int,
    end: int,
    quote: bytes,
    user_hash: Callable[[str], str],
    seen: _Seen,
    found: list[tuple[int, int, bytes]],
) -> int:
    """Adds to ``found`` the replacement of the value starting at ``start``, if any, and
    returns where it ends."""
    value_end = _value_end(raw, start, end)
    if value_end > start:
        written = raw[start:value_end]
        value = _value_text(written)
        seen.append((written, value))
        found.append((start, value_end, quote + user_hash(value).encode() + quote))
    return value_end


def _string_replacements(
    raw: bytes,
    start: int,
    end: int,
    closed: bool,
    nesting: int,
    user_hash: Callable[[str], str],
    seen: _Seen,
) -> list[tuple[int, int, bytes]]:
    """The replacements that scrub the members a string token ``raw[start:end]`` holds: a
    JSON string as the text it reads as (``{\\"user_id\\": ...}``), written back as JSON;
    another as written, each hash in the quote that does not end the string."""
    if raw[start] == ord('"') and closed:
        try:
            text = orjson.loads(raw[start:end])
        except orjson.JSONDecodeError:
            text = None
        if isinstance(text, str):
            inner = text.encode()
            scrubbed = _scrubbed(inner, b'"', nesting, user_hash, seen)
            return [] if scrubbed == inner else [(start, end, orjson.dumps(scrubbed.decode()))]
    other = b"'" if raw[start] == ord('"') else b'"'
    return _replacements(raw, start + 1, end - closed, other, nesting, user_hash, seen)


def _reads_as_user_id(text: bytes) -> bool:
    """Whether the text between a key's quotes reads as user_id."""
    return text == b"user_id" or (b"\\u" in text and _is_user_id_key(b'"' + text + b'"'))


def _is_user_id_key(token: bytes) -> bool:
    """Whether a string token reads as user_id: as written, or with \\u escapes read."""
    if token in _USER_ID_KEYS:
        return True
    if b"\\u" not in token:
        return False
    if token[:1] == b'"':
        try:
            return bool(orjson.loads(token) == "user_id")
        except orjson.JSONDecodeError:
            pass
    return _python_literal(token) == "user_id"


def _value_end(raw: bytes, start: int, end: int) -> int:
    """Where the value starting at ``start`` ends: before the comma or closing bracket that
    ends its member (brackets inside it matched, strings inside it skipped), its trailing
    whitespace left out; at ``end`` when nothing ends it."""
    depth, last, pos = 0, start, start
    while pos < end:
        token = _TOKEN.match(raw, pos, end)
        assert token is not None  # every byte starts a token
        first, pos = raw[token.start()], token.end()
        if first in _QUOTES and not _opens_string(raw, token.start(), start):
            pos = token.start() + 1
        elif first in _SPACE:
            continue
        elif first in b",]}" and depth == 0:
            break
        elif first in b"[{":
            depth += 1
        elif first in b"]}":
            depth -= 1
        last = pos
    return last


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
    opening = 1 if token[:1] in (b"b", b"B") else 0
    quoted_at = len(token) > opening and token[opening] in _QUOTES
    string = _SCAN.fullmatch(token, opening) if quoted_at else None
    if string is not None and string.group(1) is None and string.group(2) is None:
        # A string never closed (a cut-off body): its text after its opening quote.
        return string.group().decode("utf-8", "backslashreplace")[1:]
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


def _readable(raw: bytes) -> tuple[bytes, bool]:
    """What of ``raw`` is read for user ids, and whether it may hold one: what gzip or zlib data
    holds (its start, however many times compressed), as UTF-8 when it is JSON in UTF-16 or
    UTF-32; else ``raw`` itself.

    Compressed or wide data is read as such before any marker is looked for: its bytes may
    spell ``\\u`` or even ``user_id`` by chance, which said nothing of what it holds."""
    for _ in range(_MAX_LAYERS):
        inflated = _inflated(raw)
        if inflated is None:
            break
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
    return _scrubbed_readable(raw, user_hash, [])


def _scrubbed_readable(raw: bytes, user_hash: Callable[[str], str], seen: _Seen) -> bytes:
    """What ``scrub_user_ids`` gives, adding to ``seen`` what it replaced."""
    readable, maybe = _readable(raw)
    if maybe:
        readable = _scrubbed(readable, b'"', 0, user_hash, seen)
    # Read again as wide text when what is left spells a user_id so: scrubbed as UTF-8 first,
    # a UTF-8 user_id in it is replaced whichever reading is kept.
    wide = _undetected_wide_text(readable)
    if wide is not None:
        readable = _scrubbed(wide, b'"', 0, user_hash, seen)
    return readable


# Encodings JSON may come in that spell user_id with zero bytes, with the width of a character.
_WIDE = (("utf-32-le", 4), ("utf-32-be", 4), ("utf-16-le", 2), ("utf-16-be", 2))
_WIDE_MARKERS = {
    encoding: tuple(marker.encode(encoding) for marker in ("user_id", "\\u"))
    for encoding, _ in _WIDE
}


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


def _undetected_wide_text(raw: bytes) -> bytes | None:
    """``raw`` as UTF-8 when it spells a user_id (or a \\u) in UTF-16 or UTF-32 that its first
    characters did not tell (a stray byte before it, other bytes around it), else None: read
    from the offset a character of it starts at, the bytes before kept as escapes."""
    for encoding, width in _WIDE:
        if not any(marker in raw for marker in _WIDE_MARKERS[encoding]):
            continue
        for shift in range(width):
            text = raw[shift:].decode(encoding, "backslashreplace")
            if "user_id" in text or "\\u" in text:
                lead = "".join(f"\\x{byte:02x}" for byte in raw[:shift])
                return (lead + text).encode("utf-8", "backslashreplace")
    return None


# What of a compressed body is read to scrub it: quarantine keeps no more.
MAX_INFLATED_BYTES = MAX_QUARANTINE_RAW_BYTES
# How many times compressed data is read through (gzip data of gzip data).
_MAX_LAYERS = 4


def _compression(raw: bytes) -> int | None:
    """zlib's ``wbits`` for ``raw`` when it starts as gzip or zlib data does, else None."""
    if raw[:2] == b"\x1f\x8b":
        return 31
    if len(raw) > 1 and raw[0] & 0x0F == 8 and (raw[0] << 8 | raw[1]) % 31 == 0:
        return 15
    return None


def _inflated(raw: bytes) -> bytes | None:
    """The first ``MAX_INFLATED_BYTES`` of ``raw`` decompressed when it is gzip or zlib data (a
    source's body is not decompressed, as ingest's is), else None."""
    wbits = _compression(raw)
    if wbits is None:
        return None
    try:
        return zlib.decompressobj(wbits).decompress(raw, MAX_INFLATED_BYTES)
    except zlib.error:
        return None


# How much of compressed data ``may_hold_user_id`` reads: data that holds more may hold one.
MAX_CHECKED_BYTES = 8 * 1024 * 1024
# What a user_id member's key shows in a body, in every encoding the scrub reads.
_MARKERS = (b"user_id", b"\\u", *(m for markers in _WIDE_MARKERS.values() for m in markers))


def may_hold_user_id(body: bytes) -> bool:
    """Whether ``body`` may hold a user_id member in a form ``scrub_user_ids`` reads: its key
    as written or with \\u escapes, in UTF-8, UTF-16 or UTF-32 (with a byte order mark or
    not), in gzip or zlib data. False only when it surely holds none; compressed data that
    does not read through to its end, or holds more than ``MAX_CHECKED_BYTES``, may."""
    for _ in range(_MAX_LAYERS):
        wbits = _compression(body)
        if wbits is None:
            return any(marker in body for marker in _MARKERS)
        inflater = zlib.decompressobj(wbits)
        try:
            inflated = inflater.decompress(body, MAX_CHECKED_BYTES)
        except zlib.error:
            return True
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            return True
        body = inflated
    return True


def scrub_user_ids_in_text(text: str, raw: bytes, user_hash: Callable[[str], str]) -> str:
    """``text`` (an error message about ``raw``) with every user_id value of ``raw`` replaced
    by the hash ``scrub_user_ids`` gives it, however the message quotes it: as written, as its
    JSON or its repr (the hash kept in those quotes), or as the value itself. An array's or
    object's strings and scalars are replaced by its hash one by one too."""
    seen: _Seen = []
    _scrubbed_readable(raw, user_hash, seen)
    shown: dict[str, str] = {}
    for member, member_value in seen:
        hashed = user_hash(member_value)
        for token, value in [(member, member_value), *_leaves(member)]:
            as_json, as_repr = orjson.dumps(value).decode(), repr(value)
            written = token.decode("utf-8", "backslashreplace")
            spellings = (written, as_json, as_repr)
            quoted = [(form, _in_quotes_of(form, hashed)) for form in spellings]
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


def _leaves(written: bytes) -> _Seen:
    """The strings and scalars (not keys) of a value written as ``written`` when it is an
    array or object, each as written with its text, else none."""
    if written[:1] not in (b"[", b"{"):
        return []
    leaves: _Seen = []
    for token in _TOKEN.finditer(written):
        first = written[token.start()]
        if first in _QUOTES and _COLON.match(written, token.end()) is not None:
            continue
        # A key's colon may lead a scalar's run (``"n":1``); a bytes literal's ``b`` is no value.
        leaf = token.group().lstrip(b":")
        if first in _SPACE or first in b"[]{}," or leaf in (b"", b"b", b"B"):
            continue
        leaves.append((leaf, _value_text(leaf)))
    return leaves


def _in_quotes_of(form: str, hashed: str) -> str:
    """``hashed`` in the quotes (and ``b`` prefix) ``form`` is written in, if any."""
    quoted = form.removeprefix("b")
    if len(quoted) > 1 and quoted[0] in "'\"" and quoted[-1] == quoted[0]:
        return form[: len(form) - len(quoted) + 1] + hashed + quoted[-1]
    return hashed
