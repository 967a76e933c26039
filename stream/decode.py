"""Turn raw bytes into TelemetryEvents, or into specific reasons why they are not.

Accepted transport shapes: one object, an array of objects, or ``{"events": [...]}``. Each item
is judged alone, so one bad event never takes its valid neighbours down with it.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import orjson
from pydantic import ValidationError

from schemas import TelemetryEvent, ValidationIssue
from schemas.telemetry import DEFAULT_MAX_FUTURE_SKEW, MIN_TIMESTAMP, Status, Tokens
from schemas.trusted import construct_trusted
from stream.common_event import common_event, common_events
from stream.exceptions import NotUtf8
from stream.ports import Rejected

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_EVENTS_PER_BODY = 500


@dataclass(frozen=True, slots=True)
class Accepted:
    index: int
    event: TelemetryEvent


def refusal_text(rejected: Rejected) -> str:
    """The decision of a rejected input as the embedded log keeps it beside the input's
    scrubbed bytes (stream.privacy): its index, app and issues, JSON; and the id of its
    quarantine record when ingest gave it one."""
    issues = [[issue.code, issue.location, issue.message] for issue in rejected.issues]
    decision: dict[str, object] = {
        "index": rejected.index,
        "app_id": rejected.app_id,
        "issues": issues,
    }
    if rejected.record_id is not None:
        decision["record_id"] = rejected.record_id
    return orjson.dumps(decision).decode()


def refusal(text: str, raw: bytes) -> Rejected:
    """The Rejected ``refusal_text`` wrote, its input ``raw`` (as logged)."""
    decision = orjson.loads(text)
    issues = tuple(
        ValidationIssue(code=code, location=location, message=message)
        for code, location, message in decision["issues"]
    )
    return Rejected(decision["index"], raw, issues, decision["app_id"], decision.get("record_id"))


# Accepted without the frozen dataclass __init__ (one object.__setattr__ per field, 2.5× the
# cost): the decoder makes one per event. The slots' own setters fill the instance instead.
_new_accepted = object.__new__
_set_index = Accepted.__dict__["index"].__set__
_set_event = Accepted.__dict__["event"].__set__


def accepted_event(index: int, event: TelemetryEvent) -> Accepted:
    accepted: Accepted = _new_accepted(Accepted)
    _set_index(accepted, index)
    _set_event(accepted, event)
    return accepted


@dataclass(slots=True)
class Decoded:
    accepted: list[Accepted] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


@dataclass(frozen=True)
class DecodeLimits:
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_events_per_body: int = DEFAULT_MAX_EVENTS_PER_BODY
    max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW


def _issue(code: str, message: str, location: str = "$") -> ValidationIssue:
    return ValidationIssue(code=code, location=location, message=message)


def _location(prefix: str, loc: tuple[int | str, ...]) -> str:
    return prefix + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def issues_from_validation_error(
    exc: ValidationError, prefix: str = "$"
) -> tuple[ValidationIssue, ...]:
    """One issue per error, except that a metadata value failing every member of the scalar
    union (one error each) becomes a single issue: the string member's when the value is a
    string (e.g. too long), else "not a scalar"."""
    issues: list[ValidationIssue] = []
    seen_metadata: set[str] = set()
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        if len(loc) == 3 and loc[0] == "metadata":
            key = str(loc[1])
            if key in seen_metadata:
                continue
            seen_metadata.add(key)
            value = error["input"]
            if isinstance(value, str):
                issues.append(_issue(error["type"], error["msg"], _location(prefix, loc[:2])))
            else:
                issues.append(
                    _issue(
                        "metadata_not_scalar",
                        "metadata values must be strings, numbers or booleans, "
                        f"got {type(value).__name__}",
                        _location(prefix, loc[:2]),
                    )
                )
            continue
        issues.append(_issue(error["type"], error["msg"], _location(prefix, loc)))
    return tuple(issues)


def _json_error(body: bytes, exc: orjson.JSONDecodeError) -> ValidationIssue:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        return _issue(
            "invalid_utf8",
            f"body is not valid UTF-8: {utf8_error.reason} at byte {utf8_error.start}",
        )
    if "depth" in str(exc) or "recursion" in str(exc):
        return _issue("too_deeply_nested", f"JSON nests too deeply: {exc}")
    return _issue("malformed_json", f"malformed JSON: {exc}")


def _item_bytes(item: Any, raw: bytes | None) -> bytes:
    """An item's JSON for its quarantine record. orjson writes less nesting than it reads
    (its writer stops at 255 levels): such an item is kept as the whole body it came in."""
    try:
        return orjson.dumps(item)
    except orjson.JSONEncodeError:
        return raw if raw is not None else repr(item).encode()


def _guess_app_id(item: Any) -> str | None:
    app_id = item.get("app_id") if isinstance(item, dict) else None
    return app_id if isinstance(app_id, str) and len(app_id) <= 128 else None


# The model's validator, called directly: model_validate adds a Python frame and keyword
# handling per call, measurable at the processor's event rate.
_validate_python = TelemetryEvent.__pydantic_validator__.validate_python


# What stream.privacy logs for an event evalstream validated: its canonical JSON, every field
# but user_id in declared order (stream.enrich.canonical_json).
_LOGGED_KEYS = tuple(name for name in TelemetryEvent.model_fields if name != "user_id")
_STATUSES = {status.value: status for status in Status}


class Decoder:
    """Validates bodies against TelemetryEvent with the configured limits."""

    def __init__(self, limits: DecodeLimits | None = None) -> None:
        self.limits = limits or DecodeLimits()
        self._context: dict[str, Any] = {}
        # The latest timestamp the context allows (its now plus the skew).
        self._latest = datetime.min.replace(tzinfo=UTC)

    def _context_for(self, now: datetime) -> dict[str, Any]:
        # A batch decodes all its bodies with one ``now``: build its validation context once.
        context = self._context
        if context.get("now") is not now:
            skew = self.limits.max_future_skew
            context = self._context = {"now": now, "max_future_skew": skew}
            self._latest = now + skew
        return context

    def decode(self, body: bytes, now: datetime | None = None, *, common: bool = True) -> Decoded:
        """``body``'s events and rejections. ``common``: try the common shape's reading first
        (False when the caller has, and it returned None)."""
        context = self._context_for(now or datetime.now(UTC))
        if len(body) > self.limits.max_body_bytes:
            return self._reject_whole(
                body,
                _issue(
                    "body_too_large",
                    f"body is {len(body)} bytes, the limit is {self.limits.max_body_bytes}",
                ),
            )
        # The common body, one valid event object, read in one pass (stream.common_event).
        event = common_event(body, self._latest) if common else None
        if event is not None:
            return Decoded([accepted_event(0, event)], [])
        # A UTF-8 byte order mark before the JSON (some Windows tools write one) is read past,
        # as RFC 8259 allows and as NDJSON's first line is.
        text = body[len(BOM) :] if body.startswith(BOM) else body
        try:
            parsed = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return self._reject_whole(body, _json_error(text, exc))
        # Any other single event object: orjson and the validator on Python values cost ~1.2
        # µs less per event than the validator reading the JSON itself, and decide as it does,
        # with the same values (tests/unit/stream/test_decode_paths.py).
        if type(parsed) is dict and ("events" not in parsed or "app_id" in parsed):
            try:
                return Decoded([accepted_event(0, _validate_python(parsed, context=context))], [])
            except ValidationError:
                pass
        return self.decode_value(parsed, context["now"], raw=body)

    def decode_ndjson(self, body: bytes, now: datetime) -> Decoded:
        """``body`` as NDJSON: each non-blank line a body of its own (split as ``send`` splits
        a file: BOM, CR or CRLF), the events of all lines indexed in order, at most
        ``max_events_per_body`` of them."""
        try:
            lines = list(split_ndjson(io.BytesIO(body)))
        except NotUtf8 as exc:
            return self._reject_whole(body, _issue("invalid_utf8", f"body: {exc}"))
        if not lines:
            return self._reject_whole(body, _issue("no_events", "the body holds no events"))
        # Lines are counted before any is decoded (each holds one event at least).
        if len(lines) > self.limits.max_events_per_body:
            return self._reject_whole(body, self._too_many_events(len(lines)))
        decoded = Decoded()
        for line in lines:
            offset = len(decoded.accepted) + len(decoded.rejected)
            one = self.decode(line, now)
            decoded.accepted += [accepted_event(offset + a.index, a.event) for a in one.accepted]
            decoded.rejected += [replace(r, index=offset + r.index) for r in one.rejected]
        count = len(decoded.accepted) + len(decoded.rejected)
        if count > self.limits.max_events_per_body:
            return self._reject_whole(body, self._too_many_events(count))
        return decoded

    def _too_many_events(self, count: int) -> ValidationIssue:
        return _issue(
            "too_many_events",
            f"{count} events in one body, the limit is {self.limits.max_events_per_body}",
        )

    def common_event(self, body: bytes, now: datetime) -> TelemetryEvent | None:
        """The event of a body of the common shape (stream.common_event) within the limits,
        as ``decode`` would accept it; None leaves the body to ``decode``."""
        if len(body) > self.limits.max_body_bytes:
            return None
        self._context_for(now)
        return common_event(body, self._latest)

    def common_events(self, body: bytes, now: datetime) -> list[TelemetryEvent] | None:
        """The events of a body of several of the common shape (an array, or ``{"events":
        [...]}``; stream.common_event) within the limits, as ``decode`` would accept them
        all; None leaves the body to ``decode``."""
        if len(body) > self.limits.max_body_bytes:
            return None
        self._context_for(now)
        return common_events(body, self._latest, self.limits.max_events_per_body)

    def logged_event(self, body: bytes, enqueued: datetime) -> TelemetryEvent | None:
        """The event of a record evalstream wrote to its embedded log for an event it had
        validated (stream.privacy marks those), rebuilt from its canonical JSON without
        validating every field again: the checks that depend on settings (body size, future
        skew from the enqueued time) still run. None when the body is not in that form (a
        record of an older version) or fails those checks: it is then decoded like any body,
        which decides the same as for the event it was made from
        (tests/unit/stream/test_logged_events.py)."""
        if len(body) > self.limits.max_body_bytes:
            return None
        try:
            values = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(values) is not dict or tuple(values) != _LOGGED_KEYS:
            return None
        try:
            timestamp = datetime.fromisoformat(values["timestamp"])
            status = _STATUSES[values["status"]]
        except (TypeError, ValueError, KeyError):
            return None
        if (
            values["schema_version"] != 1
            or timestamp.tzinfo is not UTC
            or timestamp < MIN_TIMESTAMP
            or timestamp > enqueued + self.limits.max_future_skew
        ):
            return None
        tokens = values["tokens"]
        # Every field in declared order, as validation would have set them.
        return construct_trusted(
            TelemetryEvent,
            {
                "schema_version": 1,
                "app_id": values["app_id"],
                "timestamp": timestamp,
                "trace_id": values["trace_id"],
                "event_id": values["event_id"],
                "span_id": values["span_id"],
                "model_id": values["model_id"],
                "model_version": values["model_version"],
                "input_text": values["input_text"],
                "output_text": values["output_text"],
                "latency_ms": values["latency_ms"],
                "status": status,
                "error_type": values["error_type"],
                "tokens": None if tokens is None else construct_trusted(Tokens, tokens),
                "scores": values["scores"],
                "user_id": None,
                "metadata": values["metadata"],
            },
        )

    def decode_value(self, parsed: Any, now: datetime, raw: bytes | None = None) -> Decoded:
        """Validate an already parsed JSON value of any transport shape."""
        context = self._context_for(now)
        items, location, shape_issue = self._items(parsed)
        if shape_issue is not None:
            return self._reject_whole(raw if raw is not None else orjson.dumps(parsed), shape_issue)
        if not items:
            return self._reject_whole(
                raw if raw is not None else orjson.dumps(parsed),
                _issue("no_events", "the body holds no events", location or "$"),
            )
        if len(items) > self.limits.max_events_per_body:
            return self._reject_whole(
                raw if raw is not None else orjson.dumps(parsed), self._too_many_events(len(items))
            )
        decoded = Decoded()
        for index, item in enumerate(items):
            item_location = f"{location}[{index}]" if location else "$"
            if not isinstance(item, dict):
                decoded.rejected.append(
                    Rejected(
                        index,
                        _item_bytes(item, raw),
                        (
                            _issue(
                                "not_an_object",
                                f"an event must be a JSON object, got {type(item).__name__}",
                                item_location,
                            ),
                        ),
                    )
                )
                continue
            try:
                decoded.accepted.append(
                    accepted_event(index, _validate_python(item, context=context))
                )
            except ValidationError as exc:
                decoded.rejected.append(
                    Rejected(
                        index,
                        _item_bytes(item, raw),
                        issues_from_validation_error(exc, item_location),
                        _guess_app_id(item),
                    )
                )
        return decoded

    @staticmethod
    def _items(parsed: Any) -> tuple[list[Any], str, ValidationIssue | None]:
        if isinstance(parsed, list):
            return parsed, "$", None
        if isinstance(parsed, dict):
            if "events" in parsed and "app_id" not in parsed:
                unknown = sorted(key for key in parsed if key != "events")
                if unknown:
                    return (
                        [],
                        "",
                        _issue(
                            "unknown_envelope_key",
                            "beside 'events' the envelope takes no keys; got "
                            + ", ".join(repr(key) for key in unknown),
                        ),
                    )
                events = parsed["events"]
                if isinstance(events, list):
                    return events, "$.events", None
                return (
                    [],
                    "",
                    _issue("not_an_array", "'events' must be an array of events", "$.events"),
                )
            return [parsed], "", None
        return (
            [],
            "",
            _issue(
                "not_an_object",
                "expected a JSON object, an array of objects or "
                f'{{"events": [...]}}, got {type(parsed).__name__}',
            ),
        )

    @staticmethod
    def _reject_whole(body: bytes, issue: ValidationIssue) -> Decoded:
        return Decoded(rejected=[Rejected(0, body, (issue,))])


BOM = b"\xef\xbb\xbf"
# Read in blocks split in C: a Python loop over a file's lines cost ~1.1 µs per line.
_BLOCK = 1 << 20


def ndjson_lines(
    stream: BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """(offset, line) of each non-blank line of an NDJSON stream read from ``start``: the line
    without its ending and surrounding whitespace, and the stream offset of its first byte.
    LF, CRLF and CR-only endings all end a line, and a UTF-8 byte order mark at offset 0 is
    dropped. ``start`` must be a line's first byte (0, or an offset this gave); reading stops
    at offset ``end`` (None: the stream's end). The stream is read with ``read1``, so a pipe's
    lines come as they arrive."""
    for block_offset, block in ndjson_blocks(stream, start, end):
        for offset, piece in block_lines(block, block_offset):
            line = bare_line(piece, offset)
            if line:
                yield offset, line


def ndjson_blocks(
    stream: BinaryIO, start: int = 0, end: int | None = None
) -> Iterator[tuple[int, bytes]]:
    """What ``ndjson_lines`` reads, in blocks of whole lines with their endings: (offset of
    the block's first byte, the block). Only the stream's last block may end without a line
    ending."""
    read = getattr(stream, "read1", stream.read)
    offset = start  # of ``pending``'s first byte
    pending = b""
    left = None if end is None else end - start
    while left is None or left > 0:
        chunk = read(_BLOCK if left is None else min(_BLOCK, left))
        if not chunk:
            break
        if offset == 0 and not pending:
            refuse_wide(chunk)
        if left is not None:
            left -= len(chunk)
        # After the last LF or CR (a CR at the very end ends its line, as splitlines has it).
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if not cut:
            pending += chunk
            continue
        # The block in one copy (slicing the chunk, then concatenating, would make two).
        block = (
            b"".join((pending, memoryview(chunk)[:cut])) if cut < len(chunk) else pending + chunk
        )
        pending = chunk[cut:]
        yield offset, block
        offset += len(block)
    if pending:
        yield offset, pending


def refuse_wide(start: bytes) -> None:
    """Raise NotUtf8 when a stream starting with ``start`` is JSON in UTF-16 or UTF-32 (a byte
    order mark, or the zero bytes of its first characters: RFC 4627's detection). Its lines
    cannot be split on bytes, and each piece would be quarantined apart, unreadable."""
    encoding = json.detect_encoding(start[:4])
    if not encoding.startswith("utf-8"):
        raise NotUtf8(
            f"the NDJSON is {encoding.upper()}, not UTF-8: convert it first "
            f"(e.g. iconv -f {encoding.upper()} -t UTF-8)"
        )


def block_lines(block: bytes, offset: int) -> Iterable[tuple[int, bytes]]:
    """(offset, line with its ending) of every line of an ``ndjson_blocks`` block at
    ``offset``, blank ones too."""
    pieces = block.splitlines(keepends=True)
    # The running offsets have one more (the block's end), which zip leaves.
    return zip(itertools.accumulate(map(len, pieces), initial=offset), pieces, strict=False)


def bare_line(piece: bytes, offset: int) -> bytes:
    """A line of an ``ndjson_blocks`` block at ``offset`` as ``ndjson_lines`` gives it: without
    its ending, surrounding whitespace and (at offset 0) a byte order mark; empty when blank."""
    return (piece.removeprefix(BOM) if offset == 0 else piece).strip()


def split_ndjson(stream: BinaryIO) -> Iterator[bytes]:
    """Non-blank lines of an NDJSON stream, as ``ndjson_lines`` splits them."""
    for _, line in ndjson_lines(stream):
        yield line
